{{- define "vmcp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vmcp.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vmcp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vmcp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vmcp.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "vmcp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vmcp
{{- end }}

{{- define "vmcp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vmcp.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vmcp.secretName" -}}
{{- default (include "vmcp.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "vmcp.peersName" -}}
{{- printf "%s-peers" (include "vmcp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Replicas share sessions (and discover each other) only with Redis. */}}
{{- define "vmcp.replicated" -}}
{{- if or .Values.redis.url .Values.redis.sentinel.nodes .Values.redis.cluster.nodes .Values.redis.bundled.enabled }}true{{ end }}
{{- end }}

{{- define "vmcp.redisUrl" -}}
{{- if .Values.redis.url }}
{{- .Values.redis.url }}
{{- else }}
{{- printf "redis://:${REDIS_PASSWORD}@%s-redis:6379/0" (include "vmcp.fullname" .) }}
{{- end }}
{{- end }}

{{/* vmcp's backends: as given, or in sidecar mode with none given, the server in this pod. */}}
{{- define "vmcp.backends" -}}
{{- if and .Values.sidecar.enabled (not .Values.backends) }}
{{- list (dict "name" .Values.sidecar.name "url" (printf "http://127.0.0.1:%d%s" (int .Values.sidecar.port) .Values.sidecar.path) "local" true) | toYaml }}
{{- else }}
{{- toYaml .Values.backends }}
{{- end }}
{{- end }}

{{- define "vmcp.sidecarImage" -}}
{{- with .Values.sidecar.image }}
{{- if .tag }}{{ printf "%s:%s" .repository .tag }}{{ else }}{{ .repository }}{{ end }}
{{- end }}
{{- end }}

{{- define "vmcp.checks" -}}
{{- if .Values.sidecar.enabled }}
{{- if not .Values.sidecar.image.repository }}
{{- fail "sidecar.enabled needs sidecar.image.repository: the image of your MCP server" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not (dig "requests" "cpu" "" .Values.sidecar.resources)) }}
{{- fail "autoscaling in sidecar mode needs sidecar.resources.requests.cpu: the HPA's CPU utilization counts every container's request" }}
{{- end }}
{{- if eq (int .Values.sidecar.port) (int .Values.port) }}
{{- fail (printf "sidecar.port %d is vmcp's own port: the two containers share the pod's network" (int .Values.sidecar.port)) }}
{{- end }}
{{- end }}
{{- if and .Values.admin.enabled (eq (int .Values.admin.port) (int .Values.port)) }}
{{- fail (printf "admin.port %d is the MCP port: the admin API needs a port of its own" (int .Values.admin.port)) }}
{{- end }}
{{- if and (not (include "vmcp.replicated" .)) (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) }}
{{- fail "more than one replica (or autoscaling) needs Redis: set redis.url, redis.sentinel.nodes or redis.cluster.nodes, or redis.bundled.enabled=true to try it out" }}
{{- end }}
{{- $redis := 0 }}
{{- range (list .Values.redis.url .Values.redis.sentinel.nodes .Values.redis.cluster.nodes .Values.redis.bundled.enabled) }}{{ if . }}{{ $redis = add1 $redis }}{{ end }}{{ end }}
{{- if gt $redis 1 }}
{{- fail "set only one of redis.url, redis.sentinel.nodes, redis.cluster.nodes and redis.bundled.enabled" }}
{{- end }}
{{- if and .Values.redis.sentinel.nodes (not .Values.redis.sentinel.masterName) }}
{{- fail "redis.sentinel.nodes needs redis.sentinel.masterName" }}
{{- end }}
{{- end }}

{{/* Seconds of a duration written as 30s, 5m or 1h (the forms the chart documents). */}}
{{- define "vmcp.seconds" -}}
{{- $d := toString . }}
{{- if hasSuffix "ms" $d }}1
{{- else if hasSuffix "s" $d }}{{ trimSuffix "s" $d | int }}
{{- else if hasSuffix "m" $d }}{{ mul (trimSuffix "m" $d | int) 60 }}
{{- else if hasSuffix "h" $d }}{{ mul (trimSuffix "h" $d | int) 3600 }}
{{- else }}{{ fail (printf "duration %q: use s, m or h" $d) }}
{{- end }}
{{- end }}
