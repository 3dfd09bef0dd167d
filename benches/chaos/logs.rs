//! What vmcp said about each fault: the WARN and ERROR lines of every
//! replica's log, split by the chaos markers the schedule writes into the
//! logs, grouped by message (ids, numbers and addresses blanked out).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

/// A phase's name and its messages: message -> (count, first full line).
pub type PhaseLines = (String, BTreeMap<String, (usize, String)>);

/// The level and message of a log line (span fields dropped), with every
/// word that holds a digit (ids, ports, durations) replaced by `#`.
fn shape(line: &str) -> String {
    let from = line.find(" WARN ").or_else(|| line.find(" ERROR ")).unwrap_or(0);
    let rest = line[from..].trim_start();
    let level = rest.split(' ').next().unwrap_or("");
    let rest = rest[level.len()..].trim_start();
    let message = rest.split_once("}: ").map_or(rest, |(_, m)| m);
    let mut out = format!("{level} ");
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.chars().any(|c| c.is_ascii_digit()) {
            out.push('#');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for ch in message.trim().chars() {
        if ch.is_alphanumeric() {
            word.push(ch);
        } else {
            flush(&mut word, &mut out);
            out.push(ch);
        }
    }
    flush(&mut word, &mut out);
    out.chars().take(240).collect()
}

/// Per phase: message -> (count, first full line), over all given logs.
/// `order` lists the phases in schedule order.
pub fn summarize(logs: &Path, names: &[String], order: &[String]) -> Vec<PhaseLines> {
    let mut phases: Vec<PhaseLines> = Vec::new();
    for name in names {
        let Ok(text) = std::fs::read_to_string(logs.join(format!("{name}.log"))) else {
            continue;
        };
        let mut phase = String::from("start");
        for line in text.lines() {
            if let Some(marker) = line.strip_prefix("===== chaos: ") {
                if let Some((p, _)) = marker.split_once(" at +") {
                    phase = p.to_owned();
                }
                continue;
            }
            if !(line.contains(" WARN ") || line.contains(" ERROR ")) {
                continue;
            }
            let i = match phases.iter().position(|(p, _)| *p == phase) {
                Some(i) => i,
                None => {
                    phases.push((phase.clone(), BTreeMap::new()));
                    phases.len() - 1
                }
            };
            let entry = phases[i]
                .1
                .entry(format!("{name}: {}", shape(line)))
                .or_insert((0, line.to_owned()));
            entry.0 += 1;
        }
    }
    phases.sort_by_key(|(p, _)| order.iter().position(|o| o == p).unwrap_or(usize::MAX));
    phases
}

/// Prints the summary as a Markdown table and returns it as JSON.
pub fn report(summary: &[PhaseLines]) -> Value {
    println!("\n| phase | vmcp WARN/ERROR lines (replica: message × n) |\n|---|---|");
    let mut out = Vec::new();
    for (phase, messages) in summary {
        let cells: Vec<String> = messages.iter().map(|(m, (n, _))| format!("`{m}` × {n}")).collect();
        println!("| {phase} | {} |", cells.join("<br>"));
        let list: Vec<Value> = messages
            .iter()
            .map(|(m, (n, first))| json!({"message": m, "count": n, "first": first}))
            .collect();
        out.push(json!({"phase": phase, "lines": list}));
    }
    Value::Array(out)
}
