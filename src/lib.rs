//! vmcp: a replicated virtual MCP server.
//!
//! Data flow: `http` (front door, which asks `auth` who is calling) → `mcp` (JSON-RPC + method dispatch) →
//! `session` (runtime: backend sessions, routing) → `aggregate` (catalog) →
//! `backend` (HTTP / stdio clients); `store` keeps the metadata half of each
//! session; `config`, `telemetry` and `redact` serve all of them; `app` wires a replica;
//! `admin` is the operators' API on the admin listener; `policy` (Cedar),
//! `limits` (rate limits) and `audit` (the audit log) guard calls: the session
//! asks them through `session::guard`.

// cedar-policy turns on serde_json's `preserve_order`, which makes a `Value`
// 72 bytes (32 before): the error types that carry one (JSON-RPC `data`) are
// larger than clippy likes; they are returned on cold paths.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod affinity;
pub mod aggregate;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backend;
pub mod config;
pub mod http;
pub mod limits;
pub mod mcp;
pub mod policy;
pub mod pool;
pub mod redact;
pub mod session;
pub mod store;
pub mod sync;
pub mod telemetry;
