//! Aggregation end to end: two real rmcp backends behind one replica.

mod support;

use serde_json::json;
use support::{config_yaml, Options, Replica, TestBackend};

#[tokio::test]
async fn initialize_list_and_call_across_two_backends_with_prefixes() {
    let (alpha, beta) = (TestBackend::start("alpha").await, TestBackend::start("beta").await);
    let replica = Replica::start(&config_yaml(&[("alpha", &alpha.url), ("beta", &beta.url)], "")).await;
    let mut client = replica.client();
    let init = client.initialize().await;
    assert_eq!(init.result()["protocolVersion"], "2025-06-18");
    assert_eq!(init.result()["serverInfo"]["name"], "vmcp");
    assert!(init.result()["instructions"].as_str().unwrap().contains("alpha, beta"));
    let sid = client.session.clone().unwrap();
    assert!(sid.len() >= 32, "session id carries at least 128 bits");

    let tools = client.list_names("tools/list", "tools").await;
    for expected in ["alpha_echo", "alpha_counter", "beta_echo", "beta_whoami"] {
        assert!(
            tools.contains(&expected.to_owned()),
            "{expected} missing from {tools:?}"
        );
    }
    assert_eq!(
        client.call_tool("alpha_echo", json!({"message": "hi"})).await.text(),
        "alpha:hi"
    );
    assert_eq!(
        client.call_tool("beta_echo", json!({"message": "yo"})).await.text(),
        "beta:yo"
    );
    // Backend sessions are kept for the client session: the counter goes on.
    assert_eq!(client.call_tool("beta_counter", json!({})).await.text(), "1");
    assert_eq!(client.call_tool("beta_counter", json!({})).await.text(), "2");
    assert_eq!(client.call_tool("alpha_counter", json!({})).await.text(), "1");
    assert_eq!(alpha.stats.sessions_opened.load(std::sync::atomic::Ordering::SeqCst), 1);

    let unknown = client.call_tool("gamma_echo", json!({})).await;
    assert_eq!(unknown.error_code(), -32602);
    let ping = client.request("ping", json!({})).await;
    assert_eq!(ping.result(), &json!({}));
}

#[tokio::test]
async fn resources_prompts_and_completions_route_to_their_backend() {
    let (alpha, beta) = (TestBackend::start("alpha").await, TestBackend::start("beta").await);
    let replica = Replica::start(&config_yaml(&[("alpha", &alpha.url), ("beta", &beta.url)], "")).await;
    let mut client = replica.client();
    client.initialize().await;

    let resources = client.list_names("resources/list", "resources").await;
    assert_eq!(resources, ["mem://alpha/info", "mem://beta/info"]);
    let templates = client.request("resources/templates/list", json!({})).await;
    assert_eq!(templates.result()["resourceTemplates"].as_array().unwrap().len(), 2);
    let read = client
        .request("resources/read", json!({"uri": "mem://beta/info"}))
        .await;
    assert_eq!(read.result()["contents"][0]["text"], "beta has mem://beta/info");
    // Not listed, but matches beta's template.
    let item = client
        .request("resources/read", json!({"uri": "mem://beta/items/7"}))
        .await;
    assert_eq!(item.result()["contents"][0]["text"], "beta has mem://beta/items/7");
    let missing = client.request("resources/read", json!({"uri": "nope://x"})).await;
    assert_eq!(missing.error_code(), -32002);

    let prompts = client.list_names("prompts/list", "prompts").await;
    assert_eq!(prompts, ["alpha_greet", "beta_greet"]);
    let prompt = client
        .request(
            "prompts/get",
            json!({"name": "alpha_greet", "arguments": {"who": "bob"}}),
        )
        .await;
    assert_eq!(prompt.result()["messages"][0]["content"]["text"], "alpha greets bob");

    let completion = client
        .request(
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "beta_greet"}, "argument": {"name": "who", "value": ""}}),
        )
        .await;
    assert_eq!(completion.result()["completion"]["values"][0], "beta-a");
}

#[tokio::test]
async fn large_lists_paginate_on_both_sides() {
    let big = TestBackend::start_with(
        "big",
        Options {
            extra_tools: 180,
            ..Options::default()
        },
    )
    .await;
    let yaml = config_yaml(&[("big", &big.url)], "aggregation:\n  page_size: 64\n");
    let replica = Replica::start(&yaml).await;
    let mut client = replica.client();
    client.initialize().await;
    let first = client.request("tools/list", json!({})).await;
    assert_eq!(first.result()["tools"].as_array().unwrap().len(), 64);
    assert!(first.result()["nextCursor"].is_string());
    let tools = client.list_names("tools/list", "tools").await;
    // 8 fixture tools + 180 extra ones.
    assert_eq!(tools.len(), 188, "every tool from every backend page, each once");
    let unique: std::collections::HashSet<_> = tools.iter().collect();
    assert_eq!(unique.len(), 188);
    assert_eq!(client.call_tool("big_tool-179", json!({})).await.text(), "tool-179");
    let bad = client.request("tools/list", json!({"cursor": "not-ours"})).await;
    assert_eq!(bad.error_code(), -32602);
}

#[tokio::test]
async fn priority_mode_filters_and_renames() {
    let (alpha, beta) = (TestBackend::start("alpha").await, TestBackend::start("beta").await);
    let yaml = format!(
        "backends:
  - name: alpha
    url: {}
    tools: {{ allow: [echo, slow, whoami], deny: [slow], rename: {{ whoami: alpha-who }} }}
  - name: beta
    url: {}
    tools: {{ allow: [echo, counter, whoami] }}
aggregation:
  conflict: priority
  priority: [beta]
",
        alpha.url, beta.url
    );
    let replica = Replica::start(&yaml).await;
    let mut client = replica.client();
    client.initialize().await;
    let mut tools = client.list_names("tools/list", "tools").await;
    tools.sort();
    assert_eq!(tools, ["alpha-who", "counter", "echo", "whoami"]);
    // beta is preferred for the shared names.
    assert_eq!(client.call_tool("echo", json!({"message": "x"})).await.text(), "beta:x");
    assert_eq!(client.call_tool("whoami", json!({})).await.text(), "beta");
    assert_eq!(client.call_tool("alpha-who", json!({})).await.text(), "alpha");
    assert_eq!(client.call_tool("slow", json!({})).await.error_code(), -32602);
}
