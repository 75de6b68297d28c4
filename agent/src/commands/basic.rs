//! guest-ping, guest-sync(-delimited), guest-info.

use serde_json::{json, Value};

use crate::args::Args;
use crate::dispatch::Ctx;
use crate::error::QgaResult;

/// The version reported by guest-info and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// guest-ping: `{}`.
pub fn ping(_: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    Ok(json!({}))
}

/// guest-sync / guest-sync-delimited: echoes `id` (the 0xFF prefix of the
/// delimited form is added by the dispatcher).
pub fn sync(_: &Ctx, mut a: Args) -> QgaResult<Value> {
    let id = a.int("id")?;
    a.finish()?;
    Ok(json!(id))
}

/// guest-info: version and the command list with enabled flags.
pub fn info(ctx: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    let cmds: Vec<Value> = crate::commands::all()
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "enabled": ctx.shared.is_enabled(c.name),
                "success-response": c.success_response,
            })
        })
        .collect();
    Ok(json!({"version": VERSION, "supported_commands": cmds}))
}

/// guest-get-devices: Windows only; listed but disabled on Linux.
pub fn get_devices(_: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    Err(crate::error::QgaError::generic(
        "this feature or command is not currently supported",
    ))
}
