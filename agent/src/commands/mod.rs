//! The command set: one module per area, one table for lookup.

use serde_json::Value;

use crate::args::Args;
use crate::dispatch::Ctx;
use crate::error::QgaResult;

pub mod basic;
pub mod exec;
pub mod file;
pub mod freeze;
pub mod host;
pub mod network;
pub mod power;
pub mod ssh;
pub mod storage;
pub mod sysinfo;
pub mod vcpu_mem;

/// A command handler: arguments in, `return` value or error out.
pub type Handler = fn(&Ctx, Args) -> QgaResult<Value>;

/// One command of the registry.
#[derive(Debug)]
pub struct CommandDef {
    /// Wire name, e.g. `guest-ping`.
    pub name: &'static str,
    /// The implementation.
    pub handler: Handler,
    /// False for commands that reply only on failure (shutdown, suspend).
    pub success_response: bool,
    /// Runs on the reader thread (never blocks) instead of the worker.
    pub inline: bool,
}

const fn cmd(name: &'static str, handler: Handler) -> CommandDef {
    CommandDef {
        name,
        handler,
        success_response: true,
        inline: false,
    }
}

const fn inline(name: &'static str, handler: Handler) -> CommandDef {
    CommandDef {
        name,
        handler,
        success_response: true,
        inline: true,
    }
}

const fn no_reply(name: &'static str, handler: Handler) -> CommandDef {
    CommandDef {
        name,
        handler,
        success_response: false,
        inline: false,
    }
}

static COMMANDS: &[CommandDef] = &[
    inline("guest-sync-delimited", basic::sync),
    inline("guest-sync", basic::sync),
    inline("guest-ping", basic::ping),
    inline("guest-info", basic::info),
    no_reply("guest-shutdown", power::shutdown),
    cmd("guest-file-open", file::open),
    cmd("guest-file-close", file::close),
    cmd("guest-file-read", file::read),
    cmd("guest-file-write", file::write),
    cmd("guest-file-seek", file::seek),
    cmd("guest-file-flush", file::flush),
    inline("guest-fsfreeze-status", freeze::status),
    cmd("guest-fsfreeze-freeze", freeze::freeze),
    cmd("guest-fsfreeze-freeze-list", freeze::freeze_list),
    cmd("guest-fsfreeze-thaw", freeze::thaw),
    cmd("guest-fstrim", freeze::fstrim),
    no_reply("guest-suspend-disk", power::suspend_disk),
    no_reply("guest-suspend-ram", power::suspend_ram),
    no_reply("guest-suspend-hybrid", power::suspend_hybrid),
    cmd("guest-network-get-interfaces", network::get_interfaces),
    cmd("guest-get-vcpus", vcpu_mem::get_vcpus),
    cmd("guest-set-vcpus", vcpu_mem::set_vcpus),
    cmd("guest-get-disks", storage::get_disks),
    cmd("guest-get-fsinfo", storage::get_fsinfo),
    cmd("guest-set-user-password", host::set_user_password),
    cmd("guest-get-memory-blocks", vcpu_mem::get_memory_blocks),
    cmd("guest-set-memory-blocks", vcpu_mem::set_memory_blocks),
    cmd(
        "guest-get-memory-block-info",
        vcpu_mem::get_memory_block_info,
    ),
    inline("guest-exec-status", exec::exec_status),
    cmd("guest-exec", exec::exec),
    cmd("guest-get-host-name", sysinfo::get_host_name),
    cmd("guest-get-users", sysinfo::get_users),
    cmd("guest-get-timezone", sysinfo::get_timezone),
    cmd("guest-get-osinfo", sysinfo::get_osinfo),
    cmd("guest-get-time", host::get_time),
    cmd("guest-set-time", host::set_time),
    cmd("guest-ssh-get-authorized-keys", ssh::get_keys),
    cmd("guest-ssh-add-authorized-keys", ssh::add_keys),
    cmd("guest-ssh-remove-authorized-keys", ssh::remove_keys),
    cmd("guest-get-diskstats", storage::get_diskstats),
    cmd("guest-get-cpustats", sysinfo::get_cpustats),
    cmd("guest-get-load", sysinfo::get_load),
    cmd("guest-get-devices", basic::get_devices),
];

/// Commands listed by guest-info but disabled on Linux (as qemu-ga).
pub const DISABLED_ON_LINUX: &[&str] = &["guest-get-devices"];

/// Every command this agent implements.
pub fn all() -> &'static [CommandDef] {
    COMMANDS
}

/// Looks a command up by wire name.
pub fn find(name: &str) -> Option<&'static CommandDef> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// Names of all commands (for `--block-rpcs help`).
pub fn names() -> impl Iterator<Item = &'static str> {
    COMMANDS.iter().map(|c| c.name)
}
