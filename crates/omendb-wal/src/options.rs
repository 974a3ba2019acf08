//! Options of a log ([`WalOptions`]) and of one append ([`AppendOptions`]).

use std::time::Duration;

use crate::RecoveryMode;

/// When an append returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// After the record is synced to stable storage (`fdatasync`, or the object upload).
    #[default]
    Durable,
    /// After the record is in the log's buffer; it becomes durable by the [`SyncPolicy`], at the
    /// next durable append, or on [`crate::Wal::wait_durable`].
    Buffered,
}

/// Per-append choices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppendOptions {
    /// When the append returns.
    pub durability: Durability,
}

impl AppendOptions {
    /// Returns after the record is durable.
    pub const DURABLE: AppendOptions = AppendOptions {
        durability: Durability::Durable,
    };
    /// Returns after the record is in the log's buffer.
    pub const BUFFERED: AppendOptions = AppendOptions {
        durability: Durability::Buffered,
    };
}

/// When the writer syncs data that no [`Durability::Durable`] append is waiting for.
///
/// A durable append always forces the sync of its batch; the policy only decides for buffered
/// records. The object-store log uploads every group-commit batch, so the policy does not apply
/// to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Sync every group-commit batch.
    #[default]
    EveryCommit,
    /// Sync buffered records at most this long after they were written.
    Interval(Duration),
    /// Never sync buffered records (the OS writes them back); segments are still synced when the
    /// log rotates or closes.
    Never,
}

/// How a log is opened and run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// Size at which a local segment file is closed and a new one started (default 64 MiB).
    pub segment_bytes: u64,
    /// Largest payload accepted by an append (default 16 MiB); larger ones get
    /// [`crate::Error::RecordTooLarge`]. Must fit in one segment with its framing.
    pub max_record_bytes: usize,
    /// When buffered records are synced.
    pub sync_policy: SyncPolicy,
    /// What recovery does with damage when the log is opened.
    pub recovery_mode: RecoveryMode,
    /// Appenders wait while this many bytes are queued for the writer (default 64 MiB), so a
    /// slow disk turns into backpressure rather than unbounded memory.
    pub max_buffered_bytes: usize,
    /// The longest an append waits for room in a full buffer (default 10 s); then it gets
    /// [`crate::Error::BufferFull`] (a `Retry` error: the record is not written, the log goes
    /// on), so a storage that stops keeping up turns into an error rather than a writer that
    /// waits without end.
    pub max_buffer_wait: Duration,
    /// Reserve each new segment's blocks up front where the OS can (Linux `fallocate`), and
    /// write zeros ahead of the records, so that syncs overwrite the file instead of growing it
    /// (default on; see `docs/wal.md`).
    pub preallocate: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            max_record_bytes: 16 << 20,
            sync_policy: SyncPolicy::EveryCommit,
            recovery_mode: RecoveryMode::TolerateTornTail,
            max_buffered_bytes: 64 << 20,
            max_buffer_wait: Duration::from_secs(10),
            preallocate: true,
        }
    }
}

impl WalOptions {
    /// Sets [`WalOptions::segment_bytes`].
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// Sets [`WalOptions::max_record_bytes`].
    pub fn max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    /// Sets [`WalOptions::sync_policy`].
    pub fn sync_policy(mut self, policy: SyncPolicy) -> Self {
        self.sync_policy = policy;
        self
    }

    /// Sets [`WalOptions::recovery_mode`].
    pub fn recovery_mode(mut self, mode: RecoveryMode) -> Self {
        self.recovery_mode = mode;
        self
    }

    /// Sets [`WalOptions::max_buffered_bytes`].
    pub fn max_buffered_bytes(mut self, bytes: usize) -> Self {
        self.max_buffered_bytes = bytes;
        self
    }

    /// Sets [`WalOptions::max_buffer_wait`].
    pub fn max_buffer_wait(mut self, wait: Duration) -> Self {
        self.max_buffer_wait = wait;
        self
    }

    /// Sets [`WalOptions::preallocate`].
    pub fn preallocate(mut self, on: bool) -> Self {
        self.preallocate = on;
        self
    }

    /// Checks that the options are consistent.
    pub(crate) fn validate(&self) -> crate::Result<()> {
        let fixed = (crate::format::HEADER_LEN + crate::format::FRAME_HEADER_LEN) as u64;
        if self.max_record_bytes > u32::MAX as usize {
            return Err(crate::Error::InvalidOptions(format!(
                "max_record_bytes {} exceeds the 32-bit length field",
                self.max_record_bytes
            )));
        }
        if (self.max_record_bytes as u64).saturating_add(fixed) > self.segment_bytes {
            return Err(crate::Error::InvalidOptions(format!(
                "a record of max_record_bytes {} does not fit a segment of {} bytes",
                self.max_record_bytes, self.segment_bytes
            )));
        }
        if self.max_buffered_bytes == 0 {
            return Err(crate::Error::InvalidOptions(
                "max_buffered_bytes must be positive".to_owned(),
            ));
        }
        Ok(())
    }
}
