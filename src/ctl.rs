//! `vibe-vmm ctl`: the client of the API socket. One request per command, printed for people
//! (or as the API's JSON with `--json`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{bail, Context};
use vmm::api::http::parse_response;
use vmm::stats::Stats;

use crate::args::{CtlAction, CtlArgs};

/// How long `ctl` waits for the VMM (a pause waits for every vCPU to leave the guest, a
/// snapshot writes all of guest RAM).
const TIMEOUT: Duration = Duration::from_secs(120);

pub fn run(args: &CtlArgs) -> anyhow::Result<u8> {
    let mut body = String::new();
    let (method, path) = match &args.action {
        CtlAction::Info => ("GET", "/vm"),
        CtlAction::Stats => ("GET", "/vm/stats"),
        CtlAction::Pause => ("PUT", "/vm/pause"),
        CtlAction::Resume => ("PUT", "/vm/resume"),
        CtlAction::Shutdown => ("PUT", "/vm/shutdown"),
        CtlAction::Stop => ("PUT", "/vm/stop"),
        CtlAction::Snapshot { dir } => {
            // The VMM resolves a relative path from its own directory: send an absolute one.
            let dir = std::path::absolute(dir)
                .with_context(|| format!("bad snapshot directory {}", dir.display()))?;
            body = serde_json::json!({ "destination": dir }).to_string();
            ("PUT", "/vm/snapshot")
        }
    };
    let (status, body) = request(&args.api_socket, method, path, &body)?;
    let json: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("the VMM answered {status} with a body that is not JSON"))?;
    if !(200..300).contains(&status) {
        let msg = json["error"].as_str().unwrap_or(&body).to_string();
        bail!("{msg} (HTTP {status})");
    }
    if args.json {
        println!("{body}");
        return Ok(0);
    }
    match &args.action {
        CtlAction::Info => print_info(&json),
        CtlAction::Stats => {
            let stats: Stats =
                serde_json::from_value(json).context("the statistics are not in the format")?;
            print!("{}", stats.render());
        }
        CtlAction::Shutdown => match json["shutdown"].as_str() {
            Some("power_button") => {
                println!("power button pressed (the guest decides when to power off)")
            }
            _ => println!("stopped (the guest has no ACPI power button)"),
        },
        CtlAction::Snapshot { dir } => println!("snapshot written to {}", dir.display()),
        _ => println!("{}", json["state"].as_str().unwrap_or("?")),
    }
    Ok(0)
}

/// Sends one request and reads the whole answer (the server closes after it).
fn request(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to the API socket {}", socket.display()))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .context("no answer from the VMM")?;
    parse_response(&answer).context("the VMM's answer is not an HTTP response")
}

fn print_info(v: &serde_json::Value) {
    let c = &v["config"];
    println!("state:    {}", v["state"].as_str().unwrap_or("?"));
    let ms = v["uptime_ms"].as_u64().unwrap_or(0);
    println!("uptime:   {}.{} s", ms / 1000, ms % 1000 / 100);
    println!("boot:     {}", v["boot"].as_u64().unwrap_or(1));
    println!("vCPUs:    {}", v["vcpus"]);
    println!("memory:   {} MiB", c["memory"].as_u64().unwrap_or(0) >> 20);
    println!("kernel:   {}", c["kernel"].as_str().unwrap_or("?"));
    if let Some(i) = c["initrd"].as_str() {
        println!("initrd:   {i}");
    }
    println!("cmdline:  {}", c["cmdline"].as_str().unwrap_or(""));
    println!("devices:");
    for d in v["devices"].as_array().into_iter().flatten() {
        println!("  {}", d.as_str().unwrap_or("?"));
    }
}
