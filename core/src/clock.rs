//! The laptop's clock, checked against what it has trusted before.
//!
//! Expiry decisions (bundles, approvals, the offline grace period) depend on "now". A clock wound
//! backwards would revive expired bundles, so Fieldpatch keeps the latest trusted time it has seen
//! (the server's time at each sync, and the time of every event the local visit logs stamped
//! while the clock agreed with the server's) and
//! refuses expiry decisions, with a message that says what to do, when the clock is earlier than
//! that by more than [`TOLERANCE`]. The last successful sync (the server's time) is also the
//! "last online" moment the offline grace period counts from: it comes from the store, never from
//! the command line.

use crate::store::{Store, StoreError};
use chrono::{DateTime, TimeDelta, Utc};
use std::sync::Arc;

/// Where "now" comes from: the system clock, or (for tests and fault campaigns) a clock of the
/// caller's, such as one that jumps. Every time Fieldpatch stamps or decides with is read from
/// the [`Store`]'s clock ([`Store::clock`]), so one clock governs a whole data directory's work.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(Arc::new(Utc::now))
    }

    /// A clock that reads `now`.
    pub fn from_fn(now: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    /// The current time by this clock.
    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now().to_rfc3339())
    }
}

/// How far the clock may be behind the latest trusted time (clock drift between syncs).
pub const TOLERANCE: TimeDelta = TimeDelta::minutes(10);

const TRUSTED_TIME_META: &str = "clock.latest_trusted_time";
const LAST_ONLINE_META: &str = "clock.last_online";

/// The clock cannot be trusted for an expiry decision.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error(
        "the laptop's clock says {now} but Fieldpatch has already seen {latest} (from the inventory server or the visit log): the clock was set back, so expiry cannot be decided. Set the clock right (or sync with the inventory), then try again"
    )]
    Behind { now: DateTime<Utc>, latest: DateTime<Utc> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ClockError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            ClockError::Behind { .. } => "clock_behind",
            ClockError::Store(e) => e.code(),
        }
    }
}

fn parse(text: Option<String>) -> Option<DateTime<Utc>> {
    text.and_then(|t| DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.with_timezone(&Utc))
}

/// Remember `time` as trusted if it is later than what is known.
pub async fn note_trusted(store: &Store, time: DateTime<Utc>) -> Result<(), StoreError> {
    let known = parse(store.meta(TRUSTED_TIME_META).await?);
    if known.is_none_or(|k| time > k) {
        store.set_meta(TRUSTED_TIME_META, &time.to_rfc3339()).await?;
    }
    Ok(())
}

/// Record a successful sync at the server's `server_time`: the laptop was online then.
///
/// The server's time outranks what the laptop trusted before: when that is ahead of the
/// server's time by more than [`TOLERANCE`], the laptop's clock ran ahead after its last check
/// (the events it stamped as server-checked carry those times), and without this a clock set
/// right would be refused until real time caught up. Those event times then no longer count
/// ([`Store::distrust_event_times`]) and the server's time becomes the latest trusted time.
/// Returns the trusted time given up, if one was.
pub async fn note_online(
    store: &Store,
    server_time: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let mut given_up = None;
    if let Some(latest) = ran_ahead_of(store, server_time).await? {
        store.distrust_event_times().await?;
        store.set_meta(TRUSTED_TIME_META, &server_time.to_rfc3339()).await?;
        given_up = Some(latest);
    }
    store.set_meta(LAST_ONLINE_META, &server_time.to_rfc3339()).await?;
    note_trusted(store, server_time).await?;
    Ok(given_up)
}

/// The latest trusted time, when it is ahead of the inventory server's `server_time` by more
/// than [`TOLERANCE`]: the laptop's clock ran ahead after its last check, and
/// [`note_online`] at that time gives it up.
pub async fn ran_ahead_of(
    store: &Store,
    server_time: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(latest_trusted(store)
        .await?
        .filter(|latest| server_time.checked_add_signed(TOLERANCE).is_some_and(|s| s < *latest)))
}

/// When the laptop last synced with the inventory (the server's time then), if ever.
pub async fn last_online(store: &Store) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(parse(store.meta(LAST_ONLINE_META).await?))
}

/// The latest trusted time: the stored one, or the newest server-checked event of any local log.
pub async fn latest_trusted(store: &Store) -> Result<Option<DateTime<Utc>>, StoreError> {
    let stored = parse(store.meta(TRUSTED_TIME_META).await?);
    let newest_event = store.newest_event_time().await?;
    Ok(stored.max(newest_event))
}

/// The current time for an expiry decision: the clock, unless it is behind the latest trusted
/// time by more than [`TOLERANCE`].
pub async fn checked_now(store: &Store) -> Result<DateTime<Utc>, ClockError> {
    check(store.clock().now(), latest_trusted(store).await?)
}

/// `now`, unless it is behind `latest` (the latest trusted time, if any) by more than
/// [`TOLERANCE`].
pub fn check(
    now: DateTime<Utc>,
    latest: Option<DateTime<Utc>>,
) -> Result<DateTime<Utc>, ClockError> {
    if let Some(latest) = latest
        && now.checked_add_signed(TOLERANCE).is_some_and(|n| n < latest)
    {
        return Err(ClockError::Behind { now, latest });
    }
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_clock_set_back_past_the_latest_trusted_time_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await.unwrap();
        assert!(checked_now(&store).await.is_ok(), "nothing trusted yet");
        assert_eq!(last_online(&store).await.unwrap(), None);

        // A sync a minute ago: fine, and it is the last time the laptop was online.
        let synced = Utc::now() - TimeDelta::minutes(1);
        note_online(&store, synced).await.unwrap();
        assert!(checked_now(&store).await.is_ok());
        assert_eq!(last_online(&store).await.unwrap(), Some(synced));

        // The server's time two days ahead of this clock: the clock was wound back.
        note_online(&store, Utc::now() + TimeDelta::days(2)).await.unwrap();
        let err = checked_now(&store).await.unwrap_err();
        assert_eq!(err.code(), "clock_behind", "{err}");
        assert!(err.to_string().contains("set back"), "{err}");

        // An older time never lowers what is trusted.
        note_trusted(&store, Utc::now() - TimeDelta::days(30)).await.unwrap();
        assert!(checked_now(&store).await.is_err());
    }

    #[tokio::test]
    async fn only_server_checked_event_times_count_as_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await.unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let log = crate::visitlog::VisitLog::open(&store, key).await.unwrap();
        log.note("before any sync").await.unwrap();
        assert_eq!(latest_trusted(&store).await.unwrap(), None, "a system-clock time counted");
        store.record_clock_check(TimeDelta::zero()).await.unwrap();
        let e = log.note("after a sync that checked the clock").await.unwrap();
        let latest = latest_trusted(&store).await.unwrap().expect("a server-checked time");
        assert_eq!(latest.timestamp(), e.body.time.timestamp());
        assert!(checked_now(&store).await.is_ok());
    }

    #[tokio::test]
    async fn a_clock_that_ran_ahead_after_its_check_is_forgiven_by_the_next_sync() {
        let dir = tempfile::tempdir().unwrap();
        let ahead = Clock::from_fn(|| Utc::now() + TimeDelta::days(200));
        let store = Store::open_in(dir.path()).await.unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        note_online(&store, Utc::now()).await.unwrap();
        store.record_clock_check(TimeDelta::zero()).await.unwrap();
        // After the check the clock jumps 200 days ahead: events are stamped with it, as
        // server-checked.
        let log =
            crate::visitlog::VisitLog::open(&store.clone().with_clock(ahead), key).await.unwrap();
        log.note("stamped while the clock ran ahead").await.unwrap();
        // The clock set right looks wound back against those stamps.
        assert_eq!(checked_now(&store).await.unwrap_err().code(), "clock_behind");
        // The next sync (the server's time is now) gives them up, and decisions go on.
        let given_up = note_online(&store, Utc::now()).await.unwrap();
        assert!(given_up.is_some_and(|t| t > Utc::now() + TimeDelta::days(199)), "{given_up:?}");
        assert!(checked_now(&store).await.is_ok());
        // Events stamped after that, by the clock set right, count again; the ones given up
        // do not (the latest trusted time is the new event's, not 200 days ahead).
        let right = crate::visitlog::VisitLog::open(
            &store,
            ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
        )
        .await
        .unwrap();
        let e = right.note("the clock right again").await.unwrap();
        let latest = latest_trusted(&store).await.unwrap().unwrap();
        assert_eq!(latest.timestamp(), e.body.time.timestamp(), "{latest} {}", e.body.time);
    }
}
