//! The agent killed at every step of every operation, over the fakes: for
//! each mutating libvirt or filesystem call of an operation (define, start,
//! shutdown, destroy, undefine, metadata writes, prepare, remove), the
//! agent dies just before it and just after it (its answer lost); the
//! restarted agent must then show the state the scheduler was last told,
//! or the one it asked for, and nothing in between.

mod common;

use common::crash::{Moment, Switch, agent_over};
use segment_agent::model::{Desired, SegmentId};
use segment_agent::{
    api::convert,
    hypervisor::{Hypervisor, fake::FakeHypervisor},
    segment::{Error, SegmentManager, SegmentState},
};
use std::{sync::Arc, time::Duration};

const ID: &str = "s1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// A create that succeeds (unless cut off).
    Create,
    /// A create whose start fails: it is undone.
    FailedCreate,
    /// A create whose start fails and whose undo cannot undefine: the
    /// scheduler is told it failed, the segment is DELETING.
    FailedUndo,
    /// A stop of a running segment.
    Stop,
    /// A start of a stopped segment.
    Start,
    /// A delete of a running segment.
    Delete,
}

fn id() -> SegmentId {
    SegmentId::parse(ID).unwrap()
}

async fn create(m: &SegmentManager) -> Result<(), Error> {
    let (req, ca) = convert::create_request(common::small_req(ID, "c1"), m.settings()).unwrap();
    m.create(req, ca).await.map(|_| ())
}

/// What exists before the operation, made by a healthy agent.
async fn setup(s: Scenario, m: &SegmentManager) {
    match s {
        Scenario::Create | Scenario::FailedCreate | Scenario::FailedUndo => {}
        Scenario::Stop | Scenario::Delete => create(m).await.unwrap(),
        Scenario::Start => {
            create(m).await.unwrap();
            m.stop(&id(), Some(Duration::from_secs(1))).await.unwrap();
        }
    }
}

async fn act(s: Scenario, m: &SegmentManager) -> Result<(), Error> {
    match s {
        Scenario::Create | Scenario::FailedCreate | Scenario::FailedUndo => create(m).await,
        Scenario::Stop => m
            .stop(&id(), Some(Duration::from_secs(1)))
            .await
            .map(|_| ()),
        Scenario::Start => m.start(&id()).await.map(|_| ()),
        Scenario::Delete => m.delete(&id()).await,
    }
}

/// The calls that fail once, given the calls of a clean run.
fn failures(s: Scenario, clean: &[String]) -> Vec<usize> {
    let at = |op: &str, nth: usize| {
        clean
            .iter()
            .enumerate()
            .filter(|(_, c)| c.starts_with(op))
            .nth(nth)
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("no {op} #{nth} in {clean:?}"))
    };
    match s {
        Scenario::FailedCreate => vec![at("start", 0)],
        // The undo's undefine comes after the failed start's calls; in a
        // clean run the first undefine is none, so count on the failing run.
        Scenario::FailedUndo => vec![at("start", 0)],
        _ => vec![],
    }
}

struct Run {
    hv: Arc<FakeHypervisor>,
    dir: tempfile::TempDir,
    calls: Vec<String>,
    result: Result<(), String>,
}

/// One run of `s` that dies at `crash`, with the calls in `fail` failing.
async fn run(s: Scenario, crash: Option<(usize, Moment)>, fail: &[usize]) -> Run {
    let (hv, dir) = (
        Arc::new(FakeHypervisor::new()),
        tempfile::tempdir().unwrap(),
    );
    setup(s, &*agent_over(&hv, dir.path(), None).await).await;
    let switch = Switch::new(crash, fail);
    let m = agent_over(&hv, dir.path(), Some(switch.clone())).await;
    let result = act(s, &m).await.map_err(|e| e.to_string());
    Run {
        hv,
        dir,
        calls: switch.calls(),
        result,
    }
}

/// The desired state libvirt holds for the segment, if it has a domain.
fn persisted(hv: &FakeHypervisor) -> Option<Desired> {
    let domains = hv.list_segments().unwrap();
    let d = domains.iter().find(|d| d.name == id().domain_name())?;
    Some(d.record.as_ref().expect("our record").desired)
}

/// The state after a restart, `None` if the segment is gone.
async fn after_restart(r: &Run) -> Option<SegmentState> {
    let m = agent_over(&r.hv, r.dir.path(), None).await;
    match m.get(&id()).await {
        Ok(s) => Some(s.state),
        Err(Error::NotFound(_)) => {
            assert!(
                r.hv.domain_xml(&id().domain_name()).is_none(),
                "a domain of an unregistered segment"
            );
            assert!(
                !r.dir.path().join("segments").join(ID).exists(),
                "a directory of a gone segment"
            );
            None
        }
        Err(e) => panic!("get: {e}"),
    }
}

/// Whether the outcome is what the scheduler was told or asked for.
/// `decided`: the agent had decided to fail the create (and marked it so),
/// so the scheduler's view is, or will be, "it failed, it is gone".
fn allowed(
    s: Scenario,
    desired: Option<Desired>,
    state: Option<SegmentState>,
    decided: bool,
) -> bool {
    use SegmentState::*;
    match s {
        Scenario::Create => matches!(state, None | Some(Running)),
        Scenario::FailedCreate | Scenario::FailedUndo if decided => state.is_none(),
        Scenario::FailedCreate | Scenario::FailedUndo => matches!(state, None | Some(Running)),
        // What libvirt holds is what the scheduler asked for last.
        Scenario::Stop | Scenario::Start => match desired {
            Some(Desired::Stopped) => state == Some(Stopped),
            Some(Desired::Running) => state == Some(Running),
            _ => false,
        },
        // Once marked deleted in libvirt, a delete is finished.
        Scenario::Delete => {
            state.is_none() || (state == Some(Running) && desired != Some(Desired::Deleted))
        }
    }
}

async fn every_crash_point(s: Scenario) {
    let clean = run(s, None, &[]).await.calls;
    let mut fail = failures(s, &clean);
    if s == Scenario::FailedUndo {
        let failing = run(s, None, &fail).await.calls;
        let undefine = failing
            .iter()
            .position(|c| c.starts_with("undefine"))
            .expect("the undo undefines");
        fail.push(undefine);
    }
    let total = run(s, None, &fail).await;
    if matches!(s, Scenario::FailedCreate | Scenario::FailedUndo) {
        assert!(total.result.is_err(), "{s:?}: the create must fail");
    }
    // Once the failed create is marked deleted in libvirt, its answer (a
    // failure) is decided: whatever cuts the undo off, it never comes back.
    // The call right after the failure must be that mark.
    let mark = fail.iter().min().map(|f| f + 1);
    let mut points: Vec<Option<(usize, Moment)>> = vec![None];
    for k in 0..total.calls.len() {
        points.push(Some((k, Moment::Before)));
        points.push(Some((k, Moment::After)));
    }
    for crash in points {
        let r = run(s, crash, &fail).await;
        let desired = persisted(&r.hv);
        let state = after_restart(&r).await;
        let decided = match (crash, mark) {
            (None, Some(_)) => true,
            (Some((k, m)), Some(at)) => k > at || (k == at && m == Moment::After),
            (_, None) => false,
        };
        assert!(
            allowed(s, desired, state, decided),
            "{s:?} crashed at {crash:?} of {:?}: libvirt said {desired:?}, the restarted agent \
             shows {state:?}; the operation answered {:?}",
            total.calls,
            r.result
        );
    }
}

#[tokio::test]
async fn a_create_cut_off_anywhere_is_finished_or_gone() {
    every_crash_point(Scenario::Create).await;
}

#[tokio::test]
async fn a_failed_create_never_comes_back() {
    every_crash_point(Scenario::FailedCreate).await;
}

#[tokio::test]
async fn a_failed_create_whose_undo_failed_never_comes_back() {
    every_crash_point(Scenario::FailedUndo).await;
}

#[tokio::test]
async fn a_stop_cut_off_anywhere_ends_as_asked() {
    every_crash_point(Scenario::Stop).await;
}

#[tokio::test]
async fn a_start_cut_off_anywhere_ends_as_asked() {
    every_crash_point(Scenario::Start).await;
}

#[tokio::test]
async fn a_delete_cut_off_anywhere_is_finished_or_never_began() {
    every_crash_point(Scenario::Delete).await;
}
