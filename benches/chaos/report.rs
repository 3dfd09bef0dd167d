//! Judging the run: every call the client saw against the backends' ledger of
//! what actually ran, split by the fault during which the call ended. Printed
//! as Markdown and written as JSON.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use crate::load::{Call, Outcome, Record};

/// One stretch of the run: a fault and the settling after it.
#[derive(Clone, Debug)]
pub struct Phase {
    pub name: String,
    /// Milliseconds since the run began: the fault's injection.
    pub start_ms: f64,
    /// When the fault's action was over (replica healthy again, Redis back, thawed).
    pub done_ms: f64,
    /// What happened, measured (exit times, key counts).
    pub notes: Vec<String>,
}

/// Per-phase figures.
struct Figures {
    calls: usize,
    ok: usize,
    failed: BTreeMap<String, usize>,
    twice: usize,
    lost: usize,
    recovery_ms: Option<f64>,
    unrecovered: usize,
    longest_wait_ms: f64,
    p99_ms: f64,
}

/// The inputs of the report.
pub struct Run<'a> {
    pub record: &'a Record,
    pub phases: &'a [Phase],
    pub ledger: &'a HashMap<u64, u32>,
    pub end_ms: f64,
    pub cpu: Vec<(String, f64)>,
    pub setup: Value,
    pub error: Option<String>,
}

fn phase_of(phases: &[Phase], ms: f64) -> usize {
    phases.iter().rposition(|p| p.start_ms <= ms).unwrap_or(0)
}

fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn figures(run: &Run, i: usize, calls: &[&Call], by_session: &HashMap<u32, Vec<&Call>>) -> Figures {
    let phase = &run.phases[i];
    let until = run.phases.get(i + 1).map_or(run.end_ms, |p| p.start_ms);
    let mut failed = BTreeMap::new();
    for c in calls {
        if let Outcome::Failed(cause) = &c.outcome {
            *failed.entry(cause.clone()).or_insert(0) += 1;
        }
    }
    let twice = calls
        .iter()
        .filter(|c| run.ledger.get(&c.op).copied().unwrap_or(0) > 1)
        .count();
    let lost = run
        .record
        .sessions_lost
        .iter()
        .filter(|(_, _, ms)| phase_of(run.phases, *ms) == i)
        .count();
    // Recovery: each session that failed here gets an ok call started after
    // its last failure; the latest such answer, from the fault's injection.
    let (mut recovery_ms, mut unrecovered) = (None::<f64>, 0);
    let mut longest_wait_ms = 0.0f64;
    for own in by_session.values() {
        let last_fail = own
            .iter()
            .filter(|c| c.outcome != Outcome::Ok && c.end_ms >= phase.start_ms && c.end_ms < until)
            .map(|c| c.end_ms)
            .fold(None, |m: Option<f64>, e| Some(m.map_or(e, |m| m.max(e))));
        if let Some(last_fail) = last_fail {
            match own.iter().find(|c| c.outcome == Outcome::Ok && c.start_ms >= last_fail) {
                Some(c) => recovery_ms = Some(recovery_ms.unwrap_or(0.0).max(c.end_ms - phase.start_ms)),
                None => unrecovered += 1,
            }
        }
        // The longest a session went without an ok answer, within this phase.
        let mut prev = None::<f64>;
        for c in own.iter().filter(|c| c.outcome == Outcome::Ok) {
            if c.end_ms >= phase.start_ms && c.end_ms < until {
                let from = prev.unwrap_or(phase.start_ms).max(phase.start_ms);
                longest_wait_ms = longest_wait_ms.max(c.end_ms - from);
            }
            prev = Some(c.end_ms);
        }
    }
    Figures {
        calls: calls.len(),
        ok: calls.iter().filter(|c| c.outcome == Outcome::Ok).count(),
        failed,
        twice,
        lost,
        recovery_ms,
        unrecovered,
        longest_wait_ms,
        p99_ms: percentile(calls.iter().map(|c| c.end_ms - c.start_ms).collect(), 0.99),
    }
}

/// Prints the Markdown report and returns the JSON one.
pub fn report(run: &Run) -> Value {
    let calls = &run.record.calls;
    let mut by_phase: Vec<Vec<&Call>> = vec![Vec::new(); run.phases.len()];
    let mut by_session: HashMap<u32, Vec<&Call>> = HashMap::new();
    for c in calls {
        by_phase[phase_of(run.phases, c.end_ms)].push(c);
        by_session.entry(c.session).or_default().push(c);
    }
    for own in by_session.values_mut() {
        own.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    }
    let ran = |c: &&Call| run.ledger.get(&c.op).copied().unwrap_or(0);
    let ok = calls.iter().filter(|c| c.outcome == Outcome::Ok).count();
    let twice: Vec<&Call> = calls.iter().filter(|c| ran(c) > 1).collect();
    let ok_never_ran: Vec<&Call> = calls
        .iter()
        .filter(|c| c.outcome == Outcome::Ok && ran(c) == 0)
        .collect();
    let failed_ran = calls.iter().filter(|c| c.outcome != Outcome::Ok && ran(c) > 0).count();
    let failed_not_ran = calls.len() - ok - failed_ran;
    let known: std::collections::HashSet<u64> = calls.iter().map(|c| c.op).collect();
    let unreported = run.ledger.keys().filter(|op| !known.contains(op)).count();

    println!("\n| phase | fault | calls | ok | failed (cause × n) | executed twice | sessions lost | all sessions ok again after | longest wait for an ok answer | p99 latency |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut phases_json = Vec::new();
    for (i, phase) in run.phases.iter().enumerate() {
        let f = figures(run, i, &by_phase[i], &by_session);
        let failed = if f.failed.is_empty() {
            "0".to_owned()
        } else {
            f.failed
                .iter()
                .map(|(c, n)| format!("{c} × {n}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let recovery = match (f.recovery_ms, f.unrecovered) {
            (_, n) if n > 0 => format!("{n} session(s) never recovered"),
            (Some(ms), _) => format!("{:.2} s", ms / 1e3),
            (None, _) => "— (nothing failed)".to_owned(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} s | {:.0} ms |",
            phase.name,
            phase.notes.join("; "),
            f.calls,
            f.ok,
            failed,
            f.twice,
            f.lost,
            recovery,
            f.longest_wait_ms / 1e3,
            f.p99_ms
        );
        phases_json.push(json!({
            "phase": phase.name, "start_s": phase.start_ms / 1e3, "action_done_s": phase.done_ms / 1e3,
            "notes": phase.notes, "calls": f.calls, "ok": f.ok, "failed_by_cause": f.failed,
            "executed_twice": f.twice, "sessions_lost": f.lost,
            "recovered_after_s": f.recovery_ms.map(|ms| ms / 1e3), "sessions_not_recovered": f.unrecovered,
            "longest_wait_for_ok_s": f.longest_wait_ms / 1e3, "p99_latency_ms": f.p99_ms,
        }));
    }
    let rows = [
        ("calls made", calls.len()),
        ("calls ok", ok),
        ("calls failed", calls.len() - ok),
        ("… of which the backend did run (outcome was in doubt)", failed_ran),
        ("… of which the backend never ran", failed_not_ran),
        ("calls executed twice", twice.len()),
        ("calls reported ok but never executed", ok_never_ran.len()),
        ("executions no call was recorded for", unreported),
        ("sessions created", run.record.sessions_created as usize),
        ("sessions lost (404 session not found)", run.record.sessions_lost.len()),
        ("initialize attempts that failed", run.record.init_failures.len()),
    ];
    println!("\n| total | |\n|---|---|");
    for (name, n) in rows {
        println!("| {name} | {n} |");
    }
    println!("\n| process | CPU seconds (user + system) |\n|---|---|");
    for (name, secs) in &run.cpu {
        println!("| {name} | {secs:.1} |");
    }
    if let Some(e) = &run.error {
        println!("\n**The fault schedule stopped early:** {e}");
    }
    let evidence = |list: Vec<&Call>| -> Vec<Value> {
        list.into_iter()
            .map(|c| {
                let backend = if c.backend == 0 { "a" } else { "b" };
                json!({"op": c.op, "session_task": c.session, "backend": backend,
                       "start_s": c.start_ms / 1e3, "end_s": c.end_ms / 1e3, "ran": ran(&c),
                       "outcome": format!("{:?}", c.outcome), "detail": c.detail})
            })
            .collect()
    };
    // Up to 20 failures per cause, earliest first.
    let mut failures: Vec<&Call> = calls.iter().filter(|c| c.outcome != Outcome::Ok).collect();
    failures.sort_by(|a, b| a.end_ms.total_cmp(&b.end_ms));
    let mut per_cause: HashMap<String, usize> = HashMap::new();
    failures.retain(|c| {
        let n = per_cause.entry(format!("{:?}", c.outcome)).or_insert(0);
        *n += 1;
        *n <= 20
    });
    let (twice_n, ok_never_ran_n) = (twice.len(), ok_never_ran.len());
    let twice: Vec<&Call> = twice.into_iter().take(100).collect();
    let ok_never_ran: Vec<&Call> = ok_never_ran.into_iter().take(100).collect();
    json!({
        "setup": run.setup,
        "totals": {
            "calls": calls.len(), "ok": ok, "failed": calls.len() - ok,
            "failed_but_ran": failed_ran, "failed_never_ran": failed_not_ran,
            "executed_twice": twice_n, "ok_never_executed": ok_never_ran_n,
            "executions_without_call": unreported,
            "sessions_created": run.record.sessions_created,
            "sessions_lost": run.record.sessions_lost.len(),
            "init_failures": run.record.init_failures.len(),
            "duration_s": run.end_ms / 1e3,
        },
        "phases": phases_json,
        "cpu_seconds": run.cpu.iter().map(|(n, s)| json!({"process": n, "seconds": s})).collect::<Vec<_>>(),
        "failures": evidence(failures),
        "executed_twice": evidence(twice),
        "ok_never_executed": evidence(ok_never_ran),
        "sessions_lost": run.record.sessions_lost.iter().take(100)
            .map(|(t, sid, ms)| json!({"session_task": t, "session": sid, "at_s": ms / 1e3})).collect::<Vec<_>>(),
        "init_failures": run.record.init_failures.iter().take(100)
            .map(|(ms, e)| json!({"at_s": ms / 1e3, "error": e})).collect::<Vec<_>>(),
        "error": run.error,
    })
}
