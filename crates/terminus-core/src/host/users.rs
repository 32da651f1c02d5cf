//! users: the `[runtime] user`/`group` names as ids, and whether files open for the
//! user terminus switches to.
//!
//! I/O contract: user and group lookups through NSS (`getpwnam_r`/`getgrnam_r`, the
//! `nix` crate); [`open_as`] opens the files it is given, switching this process's
//! *effective* ids for the time it takes when it runs as root (and back).

use nix::unistd::{Gid, Group, Uid, User};
use std::path::{Path, PathBuf};

/// `user` → its uid and primary gid.
pub fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    match User::from_name(name) {
        Ok(Some(u)) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        Ok(None) => Err(format!("no user named {name:?} on this host")),
        Err(e) => Err(format!("cannot look up user {name:?}: {e}")),
    }
}

/// `group` → its gid.
pub fn lookup_group(name: &str) -> Result<u32, String> {
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no group named {name:?} on this host")),
        Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
    }
}

/// The name of the group `gid` (the number when it has none).
pub fn group_name(gid: u32) -> String {
    match Group::from_gid(Gid::from_raw(gid)) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    }
}

/// How a file is opened: read (certificates, keys, the config), append (the
/// access log, reopened on SIGUSR1), or created in its folder (a new access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    Append,
    Create,
}

fn try_open(path: &Path, how: Access) -> std::io::Result<()> {
    match how {
        Access::Read => std::fs::File::open(path).map(drop),
        Access::Append => std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop),
        // Checked, not done: write and search permission on the folder, for the
        // effective ids (AT_EACCESS).
        Access::Create => {
            use nix::fcntl::AtFlags;
            use nix::unistd::AccessFlags;
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            nix::unistd::faccessat(
                None,
                dir,
                AccessFlags::W_OK | AccessFlags::X_OK,
                AtFlags::AT_EACCESS,
            )
            .map_err(|e| {
                std::io::Error::new(
                    std::io::Error::from(e).kind(),
                    format!("cannot create a file in {}: {e}", dir.display()),
                )
            })
        }
    }
}

/// The files that do not open for `user` with `uid` and `gid` and no supplementary
/// groups (as `run` leaves itself), with the error each gives. As `who` already: plain opens. As
/// root: the effective ids switch to `who` for the opens and back, so the kernel
/// decides (modes, ACLs, every folder on the way, LSMs). As anyone else: an error,
/// as that cannot be known without root.
pub fn open_as(
    user: &str,
    (uid, gid): (u32, u32),
    files: &[(PathBuf, Access)],
) -> Result<Vec<(PathBuf, std::io::Error)>, String> {
    let open_all = || {
        files
            .iter()
            .filter_map(|(p, how)| try_open(p, *how).err().map(|e| (p.clone(), e)))
            .collect::<Vec<_>>()
    };
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    let euid = nix::unistd::geteuid();
    if euid == uid && nix::unistd::getegid() == gid {
        return Ok(open_all());
    }
    if !euid.is_root() {
        return Err(format!(
            "cannot tell which files user {} can read while running as uid {euid}: run \
             `terminus check` as root or as that user",
            user
        ));
    }
    let groups = nix::unistd::getgroups().map_err(|e| format!("getgroups: {e}"))?;
    let egid = nix::unistd::getegid();
    let switch = || -> nix::Result<()> {
        nix::unistd::setgroups(&[gid])?;
        nix::unistd::setegid(gid)?;
        nix::unistd::seteuid(uid)
    };
    let switched = switch();
    let found = switched.map(|()| open_all());
    // Back to root whatever happened: the saved uid is still 0.
    let back = nix::unistd::seteuid(Uid::from_raw(0))
        .and_then(|()| nix::unistd::setegid(egid))
        .and_then(|()| nix::unistd::setgroups(&groups));
    if let Err(e) = back {
        // Continuing with someone else's ids would make every later answer wrong.
        eprintln!(
            "terminus: cannot switch back to root after checking files as {}: {e}",
            user
        );
        std::process::exit(1);
    }
    found.map_err(|e| format!("cannot switch to user {} to check its files: {e}", user))
}
