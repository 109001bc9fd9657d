//! Network namespace handles and running code inside a namespace.
//!
//! A [`Netns`] keeps the namespace file open for its whole life, so the
//! namespace it names cannot be swapped underneath an operation (a bind mount
//! replaced, a pid reused). [`Netns::run`] executes a closure on a fresh
//! thread that entered the namespace with `setns(2)`; the thread is discarded
//! afterwards, so no pooled thread is ever left in a foreign namespace.
//!
//! Netlink sockets are bound to the namespace they were created in, so the
//! cheap way to work on a namespace is to open a socket there once
//! (see [`crate::Rtnl::open`]) and use it from any thread.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Directory where `ip netns` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// An open handle on a network namespace.
///
/// ```no_run
/// use wg_netns::Netns;
/// let pod = Netns::from_name("pod1")?;
/// let links = pod.run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))??;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// The namespace of the calling thread.
    pub fn current() -> Result<Self> {
        Self::from_path("/proc/thread-self/ns/net")
    }

    /// A named namespace, as created by `ip netns add NAME` (`/var/run/netns/NAME`).
    pub fn from_name(name: &str) -> Result<Self> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::invalid(
                "namespace name",
                format!("{name:?} is not a valid name"),
            ));
        }
        Self::from_path(Path::new(NETNS_RUN_DIR).join(name))
    }

    /// The namespace of a process (`/proc/PID/ns/net`).
    pub fn from_pid(pid: u32) -> Result<Self> {
        Self::from_path(format!("/proc/{pid}/ns/net"))
    }

    /// A namespace file at any path (a CNI runtime's `CNI_NETNS`, a bind mount).
    ///
    /// The file must be a network namespace: anything else is refused.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound {
                    what: crate::error::Object::Namespace,
                    name: path.display().to_string(),
                }
            } else {
                Error::Netns {
                    path: path.clone(),
                    op: "open",
                    source,
                }
            }
        })?;
        // NS_GET_NSTYPE would be exact; checking the filesystem magic through
        // the ioctl-free route is enough: nsfs inodes live on the nsfs device
        // and a plain file is rejected by setns anyway. We verify by asking the
        // kernel which namespace type the fd is.
        let ns = Netns { file, path };
        ns.check_is_netns()?;
        Ok(ns)
    }

    /// A namespace from an open descriptor: one received over a unix
    /// socket (`SCM_RIGHTS`), so the receiver needs no view of the sender's
    /// mount namespace. `path` is only a label for errors and
    /// [`Netns::path`] (the sender's name for it). A descriptor that is not a
    /// network namespace is refused.
    ///
    /// ```
    /// use std::os::fd::OwnedFd;
    /// use wg_netns::Netns;
    /// let fd: OwnedFd = std::fs::File::open("/proc/self/ns/net")?.into();
    /// let ns = Netns::from_fd(fd, "/proc/self/ns/net")?;
    /// assert!(ns.same_as(&Netns::current()?)?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_fd(fd: std::os::fd::OwnedFd, path: impl AsRef<Path>) -> Result<Self> {
        let ns = Netns {
            file: File::from(fd),
            path: path.as_ref().to_path_buf(),
        };
        ns.check_is_netns()?;
        Ok(ns)
    }

    fn check_is_netns(&self) -> Result<()> {
        // SAFETY: NS_GET_NSTYPE takes no argument and returns an int.
        let ty = unsafe { rustix::ioctl::ioctl(&self.file, NsGetNstype) };
        match ty {
            Ok(t) if t == CLONE_NEWNET => Ok(()),
            Ok(_) => Err(Error::invalid(
                "network namespace",
                format!("{} is a namespace of another type", self.path.display()),
            )),
            Err(e) => Err(Error::Netns {
                path: self.path.clone(),
                op: "NS_GET_NSTYPE (is this a namespace file?)",
                source: e.into(),
            }),
        }
    }

    /// Create a new, empty network namespace and pin it at
    /// `/var/run/netns/NAME` (what `ip netns add NAME` does). Fails with
    /// `EEXIST` if the name is taken.
    ///
    /// ```no_run
    /// use wg_netns::Netns;
    /// let ns = Netns::create_named("demo-a")?;
    /// // ... use it ...
    /// Netns::remove_named("demo-a")?;
    /// # Ok::<(), wg_netns::Error>(())
    /// ```
    pub fn create_named(name: &str) -> Result<Self> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::invalid(
                "namespace name",
                format!("{name:?} is not a valid name"),
            ));
        }
        let dir = Path::new(NETNS_RUN_DIR);
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        share_run_dir(dir);
        let path = dir.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| Error::Netns {
                path: path.clone(),
                op: "create mount point",
                source,
            })?;
        // unshare(CLONE_NEWNET) on a throw-away thread, then bind its
        // namespace onto the file so it outlives the thread.
        let pinned = std::thread::scope(|scope| {
            scope
                .spawn(|| -> std::io::Result<()> {
                    // SAFETY: only CLONE_NEWNET is unshared, on a thread that
                    // ends right after; no file descriptor table is unshared.
                    unsafe {
                        rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET)
                    }?;
                    rustix::mount::mount_bind("/proc/thread-self/ns/net", &path)?;
                    Ok(())
                })
                .join()
        });
        match pinned {
            Ok(Ok(())) => Self::from_path(&path),
            Ok(Err(source)) => {
                let _ = std::fs::remove_file(&path);
                Err(Error::Netns {
                    path,
                    op: "unshare and bind-mount",
                    source,
                })
            }
            Err(_) => {
                let _ = std::fs::remove_file(&path);
                Err(Error::NetnsThreadPanicked(path))
            }
        }
    }

    /// Unpin and remove a namespace created by [`Netns::create_named`] or
    /// `ip netns add`. The namespace itself ends when nothing else holds it
    /// (no process inside, no open handle). Idempotent.
    pub fn remove_named(name: &str) -> Result<()> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::invalid(
                "namespace name",
                format!("{name:?} is not a valid name"),
            ));
        }
        let path = Path::new(NETNS_RUN_DIR).join(name);
        // Unmount every mount stacked on the file (a namespace pinned twice,
        // or copied by a later recursive bind of the directory).
        for _ in 0..8 {
            if rustix::mount::unmount(&path, rustix::mount::UnmountFlags::DETACH).is_err() {
                break;
            }
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Netns {
                path,
                op: "remove",
                source,
            }),
        }
    }

    /// The path the namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `(device, inode)` of the namespace: equal for two handles on the same namespace.
    pub fn id(&self) -> Result<(u64, u64)> {
        let m = self
            .file
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", self.path.display()), e))?;
        Ok((m.dev(), m.ino()))
    }

    /// True when both handles refer to the same namespace.
    pub fn same_as(&self, other: &Netns) -> Result<bool> {
        Ok(self.id()? == other.id()?)
    }

    /// Duplicate the handle (a new file descriptor on the same namespace).
    pub fn try_clone(&self) -> Result<Netns> {
        Ok(Netns {
            file: self
                .file
                .try_clone()
                .map_err(|e| Error::io(format!("dup {}", self.path.display()), e))?,
            path: self.path.clone(),
        })
    }

    /// Run `f` on a new thread that entered this namespace; return its result.
    ///
    /// The thread is created for this call and ends with it. The closure may
    /// borrow from the caller. Processes spawned inside `f` are born in this
    /// namespace (which is how userspace WireGuard daemons are started).
    pub fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name("wg-netns".into())
                .spawn_scoped(scope, || -> Result<T> {
                    rustix::thread::move_into_link_name_space(
                        self.file.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .map_err(|e| Error::Netns {
                        path: self.path.clone(),
                        op: "setns",
                        source: e.into(),
                    })?;
                    Ok(f())
                })
                .map_err(|e| Error::io("spawning a namespace thread", e))?;
            handle
                .join()
                .map_err(|_| Error::NetnsThreadPanicked(self.path.clone()))?
        })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Make the namespace directory a shared mount point of its own, as
/// `ip netns add` does, so namespace pins made here and by iproute2 propagate
/// the same way and a later recursive self-bind by another tool cannot leave
/// a hidden copy of a pin behind (which makes its file impossible to remove).
fn share_run_dir(dir: &Path) {
    use rustix::mount::{mount_bind_recursive, mount_change, MountPropagationFlags};
    let shared = MountPropagationFlags::SHARED | MountPropagationFlags::REC;
    if mount_change(dir, shared).is_err() && mount_bind_recursive(dir, dir).is_ok() {
        let _ = mount_change(dir, shared);
    }
}

const CLONE_NEWNET: i32 = 0x4000_0000;

/// `ioctl(fd, NS_GET_NSTYPE)`: the `CLONE_NEW*` type of a namespace file.
struct NsGetNstype;

// SAFETY: NS_GET_NSTYPE (_IO(0xb7, 0x3)) takes no argument, writes nothing and
// returns the namespace type as the ioctl's return value.
unsafe impl rustix::ioctl::Ioctl for NsGetNstype {
    type Output = i32;
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> rustix::ioctl::Opcode {
        rustix::ioctl::opcode::none(0xb7, 0x3)
    }
    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        std::ptr::null_mut()
    }
    unsafe fn output_from_ptr(
        out: rustix::ioctl::IoctlOutput,
        _: *mut std::ffi::c_void,
    ) -> rustix::io::Result<i32> {
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names_and_non_namespace_files() {
        assert!(matches!(
            Netns::from_name("a/b"),
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(Netns::from_name(""), Err(Error::Invalid { .. })));
        assert!(Netns::from_name("wgnetns-does-not-exist")
            .unwrap_err()
            .is_not_found());
        assert!(Netns::from_path("/proc/self/status").is_err());
    }

    #[test]
    fn current_namespace_is_itself() {
        let a = Netns::current().unwrap();
        let b = Netns::from_pid(std::process::id()).unwrap();
        assert!(a.same_as(&b).unwrap());
        let inside = a.run(|| Netns::current().unwrap().id().unwrap()).unwrap();
        assert_eq!(inside, a.id().unwrap());
    }
}
