//! `vmcp sessions list|show|delete|revoke`: the admin API from a shell.
//!
//! The URL is `--url`, else `VMCP_ADMIN_URL`, else [`DEFAULT_URL`]; the
//! token is read from `--token-file`, else `VMCP_ADMIN_TOKEN` (never from an
//! argument, which `ps` would show). Plain HTTP: reach the admin port on a
//! cluster network or through `kubectl port-forward`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// The admin address the README and the chart use.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9090";

#[derive(Args)]
pub struct Sessions {
    /// Base URL of a replica's admin listener [env: VMCP_ADMIN_URL; default: http://127.0.0.1:9090].
    #[arg(long, global = true)]
    url: Option<String>,
    /// File holding the admin token [default: the VMCP_ADMIN_TOKEN environment variable].
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: SessionsCommand,
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// List sessions (every replica's: they are read from the store).
    List {
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        issuer: Option<String>,
        #[arg(long)]
        backend: Option<String>,
        #[arg(long)]
        replica: Option<String>,
        /// Sessions per page (1-500).
        #[arg(long)]
        limit: Option<usize>,
        /// Start from this `next_cursor` of an earlier listing.
        #[arg(long)]
        cursor: Option<String>,
        /// Follow `next_cursor` to the end.
        #[arg(long)]
        all: bool,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one session's metadata (no secrets).
    Show { id: String },
    /// End one session on every replica.
    Delete { id: String },
    /// End every session of a subject on every replica.
    Revoke {
        #[arg(long)]
        subject: String,
        /// The token issuer; default: the one `auth.inbound` names.
        #[arg(long)]
        issuer: Option<String>,
    },
}

pub fn run(args: Sessions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(run_async(args))
}

struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

async fn run_async(args: Sessions) -> anyhow::Result<()> {
    let base = args
        .url
        .or_else(|| std::env::var("VMCP_ADMIN_URL").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let admin = Admin {
        http: reqwest::Client::new(),
        base: base.trim_end_matches('/').to_owned(),
        token: token(args.token_file.as_deref())?,
    };
    match args.command {
        SessionsCommand::List {
            subject,
            issuer,
            backend,
            replica,
            limit,
            cursor,
            all,
            json,
        } => {
            let mut query: Vec<(&str, String)> = [
                ("subject", subject),
                ("issuer", issuer),
                ("backend", backend),
                ("replica", replica),
                ("limit", limit.map(|l| l.to_string())),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
            list(&admin, &mut query, cursor, all, json).await
        }
        SessionsCommand::Show { id } => {
            let (_, body) = admin.call(reqwest::Method::GET, &session_path(&id), None, &[]).await?;
            println!("{}", serde_json::to_string_pretty(&body)?);
            Ok(())
        }
        SessionsCommand::Delete { id } => {
            admin
                .call(reqwest::Method::DELETE, &session_path(&id), None, &[])
                .await?;
            println!("deleted {id}");
            Ok(())
        }
        SessionsCommand::Revoke { subject, issuer } => {
            let body = json!({ "subject": subject, "issuer": issuer });
            let (_, answer) = admin
                .call(reqwest::Method::POST, "/admin/revoke", Some(body), &[])
                .await?;
            println!("{answer}");
            Ok(())
        }
    }
}

/// The token from the file, else from `VMCP_ADMIN_TOKEN`.
fn token(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    let token = match file {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
        None => std::env::var("VMCP_ADMIN_TOKEN").unwrap_or_default(),
    };
    let token = token.trim();
    if token.is_empty() {
        bail!("no admin token: set VMCP_ADMIN_TOKEN or pass --token-file");
    }
    Ok(token.to_owned())
}

fn session_path(id: &str) -> String {
    let id = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
    format!("/admin/sessions/{id}")
}

async fn list(
    admin: &Admin,
    query: &mut Vec<(&str, String)>,
    mut cursor: Option<String>,
    all: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut first = true;
    loop {
        query.retain(|(k, _)| *k != "cursor");
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let (_, page) = admin.call(reqwest::Method::GET, "/admin/sessions", None, query).await?;
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if json {
            println!("{page}");
        } else {
            print_table(&page, first);
        }
        first = false;
        if !all || cursor.is_none() {
            break;
        }
    }
    if let (false, Some(c)) = (json, cursor) {
        println!("next cursor: {c}");
    }
    Ok(())
}

fn print_table(page: &Value, header: bool) {
    if header {
        println!(
            "{:<40}  {:<16}  {:<24}  {:<13}  BACKENDS",
            "ID", "REPLICA", "SUBJECT", "LAST SEEN"
        );
    }
    for s in page["sessions"].as_array().into_iter().flatten() {
        let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
        let backends: Vec<&str> = s["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["name"].as_str())
            .collect();
        println!(
            "{:<40}  {:<16}  {:<24}  {:<13}  {}",
            text(&s["id"]),
            text(&s["replica"]),
            text(&s["subject"]["subject"]),
            s["last_seen_ms"].as_u64().unwrap_or(0),
            backends.join(",")
        );
    }
}

impl Admin {
    /// One request; an error answer becomes an error naming its status and message.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        query: &[(&str, String)],
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let mut url = format!("{}{path}", self.base);
        for (i, (key, value)) in query.iter().enumerate() {
            let value = percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC);
            url.push_str(&format!("{}{key}={value}", if i == 0 { '?' } else { '&' }));
        }
        let mut request = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", vmcp::redact::url(&self.base)))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let why = body["error"].as_str().unwrap_or(text.trim());
            bail!("the admin API answered {status}: {why}");
        }
        Ok((status, body))
    }
}
