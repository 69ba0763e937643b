//! The socket's requests: each one to the owner that answers it (the armer, the engine).

use super::wire::{arm_error_code, explain_error_code, mode_error_code};
use crate::arming::Armer;
use crate::ipc::{
    ErrorCode, ExplainReply, ModeChange, Reply, Request, Response, StatusReply, UnitReply,
};

/// Answers one request.
pub(super) fn handle_request(ctx: &Armer, req: Request) -> Response {
    match req {
        Request::Ping => Response::ok(&Reply::Pong {
            version: env!("CARGO_PKG_VERSION").into(),
        }),
        Request::Status => match ctx.engine.status() {
            Ok(s) => {
                use std::sync::atomic::Ordering::Relaxed;
                let mut reply = StatusReply::from(&s);
                for u in &mut reply.units {
                    let gated = u.mapping_gate.is_some();
                    u.user_namespaces = u
                        .pid
                        .map(|p| user_namespaces_of(p, gated))
                        .unwrap_or_default();
                }
                reply.pid = std::process::id();
                reply.version = env!("CARGO_PKG_VERSION").into();
                reply.schema = crate::ipc::STATUS_SCHEMA;
                reply.config_reloads = ctx.stats.reloads.load(Relaxed);
                reply.config_reload_errors = ctx.stats.reload_errors.load(Relaxed);
                reply.fail_open_containers = ctx.stats.fail_open.load(Relaxed);
                reply.mapping_gate = ctx.mapping_gate_state.clone();
                let features = ctx
                    .features
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                reply.kernel = features.kernel.clone();
                reply.features = features.features.clone();
                reply.metrics = ctx
                    .metrics_state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                reply.rearm_pending = ctx
                    .pending_units()
                    .into_iter()
                    .map(|p| crate::ipc::PendingReply {
                        id: p.id,
                        attempts: p.attempts,
                        error: p.error,
                    })
                    .collect();
                Response::ok(&Reply::Status(Box::new(reply)))
            }
            Err(e) => Response::err(ErrorCode::from(&e), e.to_string()),
        },
        Request::Explain { id, path, against } => match ctx.explain(&id, &path, against.as_deref())
        {
            Ok(e) => Response::ok(&Reply::Explained(ExplainReply::from(&e))),
            Err(e) => Response::err(explain_error_code(&e), e.to_string()),
        },
        Request::Disarm { id } => {
            let result = ctx.engine.disarm(&id);
            if result.is_ok() {
                ctx.forget(&id);
            }
            match result {
                Ok(s) => Response::ok(&Reply::Disarmed(Box::new(UnitReply::from(&s)))),
                Err(e) => Response::err(ErrorCode::from(&e), e.to_string()),
            }
        }
        Request::HandOver => Response::err(ErrorCode::Invalid, "hand-over is not a plain request"),
        Request::SetMode {
            mode,
            select,
            by,
            reason,
        } => match ctx.set_mode(&select.into(), mode, &by, &reason) {
            Ok(switched) => Response::ok(&Reply::ModeSet {
                mode_changes: switched.into_iter().map(ModeChange::from).collect(),
            }),
            Err(e) => Response::err(mode_error_code(&e), e.to_string()),
        },
        Request::ModeFor { identity } => Response::ok(&Reply::ModeFor {
            mode_for: ctx.mode_for(&identity.into()),
        }),
        Request::Arm(req) => {
            let id = req.id.clone();
            match ctx.arm((*req).into()) {
                Ok(r) => Response::ok(&Reply::Armed(r.into())),
                Err(e) => {
                    log::warn!(
                        "arm {:?} failed: {e}",
                        id.chars().take(128).collect::<String>()
                    );
                    Response::err(arm_error_code(&e), format!("arm failed: {e}"))
                }
            }
        }
    }
}

/// Whether the container whose first process is `pid` can make its own user namespaces,
/// in words: a seccomp filter in force (driftlock-runtime's refuses them in enforce mode, as
/// Docker's and containerd's default profiles do without `CAP_SYS_ADMIN`), or none; and
/// whether the mapping gate (`gated`) judges code from the mounts such a namespace holds.
pub(super) fn user_namespaces_of(pid: i32, gated: bool) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    match status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(str::trim)
    {
        Some("2") => "a seccomp filter is in force (driftlock-runtime's refuses new user namespaces; so do Docker's and containerd's default profiles without CAP_SYS_ADMIN)".into(),
        Some("0") if gated => "not refused: no seccomp filter; the container may make its own user and mount namespaces, whose mounts no mark covers: the mapping gate judges code from them (see its line)".into(),
        Some("0") => "not refused: no seccomp filter; the container may make its own user and mount namespaces, whose mounts no mark covers (exec from them is not judged)".into(),
        _ => String::new(),
    }
}
