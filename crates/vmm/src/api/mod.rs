//! The API socket (`--api-socket PATH`): HTTP/1.1 with JSON bodies over a Unix socket, so
//! `curl --unix-socket PATH http://localhost/vm` works as with Firecracker and Cloud
//! Hypervisor. `http.rs` parses and writes the protocol, `server.rs` runs the one thread
//! that serves it, this file maps requests to the [`VmController`].
//!
//! | method | path | does | answers |
//! |---|---|---|---|
//! | GET | /vm | state, uptime, configuration | 200 |
//! | GET | /vm/stats | exit statistics | 200 |
//! | PUT | /vm/pause | pause every vCPU and the devices | 200; 409 if paused |
//! | PUT | /vm/resume | resume | 200; 409 if running |
//! | PUT | /vm/shutdown | press the ACPI power button; without ACPI, stop | 202; 200 |
//! | PUT | /vm/stop | stop the VM now | 200 |
//! | PUT | /vm/snapshot | `{"destination": DIR}`: write a snapshot of the paused VM | 200; 409 if running |

pub mod http;
mod server;

pub use server::{ApiServer, Limits, Listener};

use http::{Request, Response};

use crate::control::{ControlError, Shutdown, VmController};
use crate::state::Outcome;

/// The routes, for the 404 and 405 answers.
const ROUTES: &[(&str, &[&str])] = &[
    ("/vm", &["GET"]),
    ("/vm/stats", &["GET"]),
    ("/vm/pause", &["PUT", "POST"]),
    ("/vm/resume", &["PUT", "POST"]),
    ("/vm/shutdown", &["PUT", "POST"]),
    ("/vm/stop", &["PUT", "POST"]),
    ("/vm/snapshot", &["PUT", "POST"]),
];

/// The body of an action: nothing, or a JSON object with only the fields it takes.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Action {
    /// Why (shown in how the VM ended); stop and shutdown only.
    reason: Option<String>,
}

fn action(req: &Request) -> Result<Action, Response> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Action::default());
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| Response::error(400, format!("bad request body: {e}")))
}

fn ok(vm: &VmController) -> Response {
    Response::json(200, serde_json::json!({ "state": vm.state() }).to_string())
}

fn conflict(e: ControlError) -> Response {
    Response::error(409, e.to_string())
}

/// The body of `PUT /vm/snapshot`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    /// The directory to write (created if missing; refused if it holds a snapshot).
    destination: std::path::PathBuf,
}

/// Writes a snapshot of the paused VM where the body says; the VM stays paused.
fn snapshot(vm: &VmController, req: &Request) -> Response {
    let body: SnapshotBody = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => return Response::error(400, format!("bad request body: {e}")),
    };
    use crate::snapshot::SnapshotError as E;
    match vm.snapshot(&body.destination) {
        Ok(()) => Response::json(
            200,
            serde_json::json!({ "state": vm.state(), "snapshot": body.destination }).to_string(),
        ),
        Err(e @ (E::NotPaused | E::Stopped)) => Response::error(409, e.to_string()),
        Err(e @ (E::Exists { .. } | E::NotADirectory { .. })) => {
            Response::error(400, e.to_string())
        }
        Err(e) => Response::error(500, error_chain(&e)),
    }
}

/// An error and its causes, "a: b: c".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s += &format!(": {c}");
        cause = c.source();
    }
    s
}

/// Answers one request.
pub fn handle(vm: &VmController, req: &Request) -> Response {
    // A query string is ignored.
    let path = req.path.split('?').next().unwrap_or_default();
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let Some((_, methods)) = ROUTES.iter().find(|(p, _)| *p == path) else {
        return Response::error(404, format!("no such endpoint: {}", req.path));
    };
    if !methods.contains(&req.method.as_str()) {
        let mut r = Response::error(
            405,
            format!(
                "{} {path} is not allowed (use {})",
                req.method,
                methods.join(" or ")
            ),
        );
        r.headers.push(format!("Allow: {}", methods.join(", ")));
        return r;
    }
    if path == "/vm/snapshot" {
        return snapshot(vm, req);
    }
    let body = match methods[0] {
        "GET" if !req.body.is_empty() => {
            return Response::error(400, format!("GET {path} takes no body"))
        }
        "GET" => Action::default(),
        _ => match action(req) {
            Ok(a) => a,
            Err(r) => return r,
        },
    };
    match path {
        "/vm" => Response::json(
            200,
            serde_json::json!({
                "state": vm.state(),
                "uptime_ms": vm.uptime().as_millis() as u64,
                "vcpus": vm.info().cpus,
                "config": vm.info(),
                "devices": vm.info().devices,
                "boot": vm.info().boot,
            })
            .to_string(),
        ),
        "/vm/stats" => Response::json(200, serde_json::to_string(&vm.stats()).unwrap_or_default()),
        "/vm/pause" => vm.pause().map_or_else(conflict, |()| ok(vm)),
        "/vm/resume" => vm.resume().map_or_else(conflict, |()| ok(vm)),
        "/vm/stop" | "/vm/shutdown" => {
            let how = if path == "/vm/stop" {
                "stop"
            } else {
                "shutdown"
            };
            let why = body.reason.map_or_else(
                || format!("{how} requested through the API"),
                |r| format!("{how} requested through the API: {r}"),
            );
            if path == "/vm/stop" {
                return vm
                    .stop(Outcome::Requested(why))
                    .map_or_else(conflict, |()| ok(vm));
            }
            // 202: the guest was asked and decides; 200: the VM was stopped (no ACPI).
            match vm.shutdown(Outcome::Requested(why)) {
                Ok(done) => Response::json(
                    if done == Shutdown::PowerButton {
                        202
                    } else {
                        200
                    },
                    serde_json::json!({ "state": vm.state(), "shutdown": done }).to_string(),
                ),
                Err(e @ ControlError::PowerButton(_)) => Response::error(500, e.to_string()),
                Err(e) => conflict(e),
            }
        }
        _ => Response::error(500, format!("{path} has no handler")),
    }
}
