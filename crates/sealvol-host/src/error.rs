//! The crate's one error type.

use std::path::PathBuf;

/// What went wrong on the host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key opens no keyslot (a clean "no": nothing was changed).
    #[error("{0}")]
    WrongKey(String),
    /// The LUKS header or its data refused what was asked (invalid or hostile header, a KDF
    /// over the limits, data inside an attached header, a keyslot that does not exist ...).
    #[error(transparent)]
    Luks(Box<sealvol_luks::Error>),
    /// A verity image, or the signature over its root hash, does not verify against what the
    /// caller trusts (a clean "no": nothing was mounted).
    #[error("{0}")]
    NotVerified(String),
    /// The block device layer refused (a data segment it cannot serve, an image it cannot
    /// read ...).
    #[error(transparent)]
    Block(Box<sealvol_block::Error>),
    /// Serving failed: the FUSE file could not be mounted, the NBD socket could not be made,
    /// TLS credentials are unusable ...
    #[error(transparent)]
    Serve(Box<sealvol_export::Error>),
    /// The volume's file system could not be mounted.
    #[error("cannot mount the volume's file system on {mount_point}{hint}: {source}")]
    MountFs {
        /// Where it was to be mounted.
        mount_point: PathBuf,
        /// What to try (`; a new volume needs --mkfs ext4` when no file system was made).
        hint: &'static str,
        /// Why the mount failed.
        #[source]
        source: Box<Error>,
    },
    /// A background export process reported a failure, or stopped without a report (then
    /// with the end of its log); everything it had set up is undone.
    #[error("{message}")]
    Export {
        /// What it reported.
        message: String,
    },
    /// A file that should hold a LUKS header holds none sealvol can use.
    #[error("{path} is not a usable LUKS header{hint}: {source}")]
    NotAHeader {
        /// The file.
        path: PathBuf,
        /// What to try (`--header` when none was given).
        hint: &'static str,
        /// Why the header was refused.
        #[source]
        source: Box<sealvol_luks::Error>,
    },
    /// A file `format` would overwrite holds a LUKS header: formatting would destroy its
    /// keys, and the caller did not ask to overwrite it. Nothing was written.
    #[error("{} already holds a LUKS header; formatting destroys its keys. Pass --batch-mode to overwrite it", path.display())]
    HoldsHeader {
        /// The header file.
        path: PathBuf,
    },
    /// An operation that destroys or replaces keys was not confirmed. Nothing was changed:
    /// ask `question` and call again confirmed, or give up.
    #[error("{question} Not confirmed; nothing was changed")]
    NotConfirmed {
        /// What the operation does, as a question for the user.
        question: String,
    },
    /// A dm-verity signature that does not verify (a clean "no"): nothing was hashed,
    /// served or mounted.
    #[error("signature {} refused: {reason}", signature.display())]
    SignatureRefused {
        /// The signature file.
        signature: PathBuf,
        /// Why it was refused.
        reason: Box<sealvol_verity::Error>,
    },
    /// Data that does not match its dm-verity hash tree (a clean "no"), found by a
    /// verified read after `bytes` good bytes.
    #[error("verified read of {} stopped after {bytes} bytes: {reason}", data.display())]
    CorruptData {
        /// The data file.
        data: PathBuf,
        /// Bytes read and verified before the corrupt block.
        bytes: u64,
        /// The reader's report, naming the block.
        reason: std::io::Error,
    },
    /// A dm-verity tree, superblock, key or signature file refused what was asked.
    #[error("{context}: {source}")]
    Verity {
        /// What was being done, naming the file.
        context: String,
        /// Why.
        #[source]
        source: Box<sealvol_verity::Error>,
    },
    /// An overlay (`sealvol-overlay`) refused: tampering, a rollback against the expected
    /// checkpoint, a base or lower layer that is not the overlay's, a frozen layer written
    /// ... A key that opens no keyslot is [`Error::WrongKey`] instead.
    #[error("{}: {source}", path.display())]
    Overlay {
        /// The overlay file.
        path: PathBuf,
        /// What the overlay crate said.
        #[source]
        source: Box<sealvol_overlay::Error>,
    },
    /// The crypto backend failed (the operating system's random generator, a cipher).
    #[error(transparent)]
    Crypto(#[from] sealvol_crypto::Error),
    /// A program could not be started.
    #[error("cannot run {program}: {source}; is it installed (Debian package {package})?")]
    Spawn {
        /// The program.
        program: String,
        /// The Debian package that has it.
        package: &'static str,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// A program failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// The volume is served already.
    #[error(
        "{volume} is already open (by process {pid}){where_}; close it first with `sealvol close`"
    )]
    AlreadyOpen {
        /// The volume.
        volume: PathBuf,
        /// The process holding it, when known.
        pid: String,
        /// Where it is mounted or served, when known.
        where_: String,
    },
    /// A VM's qemu exited right after it started (a bad option, a disk it cannot open ...).
    #[error("qemu exited right after it started ({status}); see {}", console_log.display())]
    QemuExited {
        /// Its exit status.
        status: String,
        /// The serial console log, where qemu and the guest said why.
        console_log: PathBuf,
    },
    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Bad input, with what to do about it.
    #[error("{0}")]
    Invalid(String),
    /// A state or runtime directory that others could plant links in (owned by another
    /// user, or writable by group or others): sealvol refuses to use it.
    #[error("refusing to use {path}: {found}; {fix}")]
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        found: String,
        /// How to fix it.
        fix: String,
    },
    /// An entry of a state or runtime directory is not what sealvol made there (a symbolic
    /// link, a hard link, another kind of file): it was not followed, read or written.
    #[error("{path} is {found}; {action}")]
    Planted {
        /// The entry.
        path: PathBuf,
        /// What it is.
        found: String,
        /// What was done or what to do.
        action: String,
    },
    /// The key a volume needs is not available: a registered key that is not (or no longer)
    /// registered, or a key file that is missing or that others than root could read.
    #[error("{key} is not available: {reason}; {fix}")]
    KeyUnavailable {
        /// The key's source, named (never the key).
        key: String,
        /// Why it is not available.
        reason: String,
        /// What to do.
        fix: String,
    },

    /// There is no volume of that id.
    #[error("there is no volume {id}; create it first")]
    NoSuchVolume {
        /// The id asked for.
        id: String,
    },

    /// The volume is in use (mounted for containers or API clients), so it is refused.
    #[error("volume {id} is in use by {users}; {fix}")]
    InUse {
        /// The volume.
        id: String,
        /// Who uses it, in words.
        users: String,
        /// What to do.
        fix: String,
    },
    /// A step of an operation of the volume or VM manager failed; what was done before it
    /// has been undone (or, for a destroy, will be finished by the next run or `sweep`).
    /// Match `cause` for why: a key that opens nothing is a [`Error::WrongKey`] there
    /// ([`Error::is_wrong_key`] looks inside).
    #[error("{} failed at step `{step}`: {cause}{after}", subject.operation(verb, id))]
    Step {
        /// What the operation was on: a volume or a VM.
        subject: Subject,
        /// `create`, `open`, `start`, `destroy` ...
        verb: &'static str,
        /// The workload id.
        id: String,
        /// The step that failed.
        step: &'static str,
        /// Why (never a key). Its message is part of this one, so it is not reported again
        /// as this error's source.
        cause: Box<Error>,
        /// What happened after: the rollback's outcome.
        after: String,
    },
}

/// What a manager's operation is on, in [`Error::Step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A workload volume (`sealvol volume ...`).
    Volume,
    /// A workload VM (`sealvol vm ...`).
    Vm,
}

impl Subject {
    /// The operation `verb` on `id`, as messages name it: `create of volume web-1`,
    /// `vm start of web-1`.
    pub fn operation(self, verb: &str, id: &str) -> String {
        match self {
            Subject::Volume => format!("{verb} of volume {id}"),
            Subject::Vm => format!("vm {verb} of {id}"),
        }
    }
}

impl From<sealvol_luks::Error> for Error {
    /// A wrong key stays a wrong key ([`Error::WrongKey`]); the rest is [`Error::Luks`].
    fn from(e: sealvol_luks::Error) -> Self {
        match e {
            sealvol_luks::Error::WrongKey => Error::WrongKey(e.to_string()),
            e => Error::Luks(Box::new(e)),
        }
    }
}

impl From<sealvol_block::Error> for Error {
    fn from(e: sealvol_block::Error) -> Self {
        Error::Block(Box::new(e))
    }
}

impl From<sealvol_verity::Error> for Error {
    fn from(e: sealvol_verity::Error) -> Self {
        Error::verity("the verity image", e)
    }
}

impl From<sealvol_export::Error> for Error {
    fn from(e: sealvol_export::Error) -> Self {
        Error::Serve(Box::new(e))
    }
}

impl Error {
    /// Whether this is a clean "no": a key that opens nothing.
    pub fn is_wrong_key(&self) -> bool {
        match self {
            Error::WrongKey(_) => true,
            Error::Step { cause, .. } => cause.is_wrong_key(),
            _ => false,
        }
    }

    /// Whether this is a clean "no" a caller reports as such (exit code 1 on the command
    /// line): a key that opens nothing, a refused signature, a verity root or data that does
    /// not verify, an overlay older than the checkpoint expected. Nothing was started or
    /// changed.
    pub fn is_clean_no(&self) -> bool {
        self.is_wrong_key()
            || self.is_rollback()
            || matches!(
                self,
                Error::SignatureRefused { .. } | Error::CorruptData { .. } | Error::NotVerified(_)
            )
    }

    /// The overlay error `e` about the file `path` (a wrong key stays [`Error::WrongKey`]).
    pub(crate) fn overlay(path: &std::path::Path, e: sealvol_overlay::Error) -> Self {
        match e {
            sealvol_overlay::Error::WrongKey => Error::WrongKey(format!(
                "{}: no keyslot of the overlay opens with this key",
                path.display()
            )),
            e => Error::Overlay {
                path: path.to_path_buf(),
                source: Box::new(e),
            },
        }
    }

    /// Whether this is an overlay older than the checkpoint it was expected at (or another
    /// history at the same counter): a saved copy presented again.
    pub fn is_rollback(&self) -> bool {
        match self {
            Error::Overlay { source, .. } => matches!(
                **source,
                sealvol_overlay::Error::Rollback { .. } | sealvol_overlay::Error::Diverged { .. }
            ),
            Error::Step { cause, .. } => cause.is_rollback(),
            _ => false,
        }
    }

    pub(crate) fn verity(context: impl Into<String>, source: sealvol_verity::Error) -> Self {
        Error::Verity {
            context: context.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
