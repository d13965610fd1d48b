//! The README's task lifecycle diagram names every state the code has.

use mdm_sync::server::TaskState;
use mdm_sync::wire::TaskId;

/// One value of every variant (`TaskState` is non-exhaustive, so a new variant
/// must be added here by hand; `server::store` has an in-crate check).
fn all_states() -> Vec<TaskState> {
    let states = vec![
        TaskState::Queued,
        TaskState::PushSent,
        TaskState::Offered,
        TaskState::Delivered,
        TaskState::InProgress { percent: None },
        TaskState::Deferred {
            retry_after_s: None,
        },
        TaskState::Succeeded { result: None },
        TaskState::Failed { reason: 0 },
        TaskState::Cancelled,
        TaskState::Expired,
        TaskState::Superseded { by: TaskId(0) },
        TaskState::Dropped,
    ];
    states
}

#[test]
fn readme_diagram_names_every_task_state() {
    let readme = include_str!("../README.md");
    let start = readme
        .find("## Task lifecycle")
        .expect("README has a Task lifecycle section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    for state in all_states() {
        let debug = format!("{state:?}");
        let name = debug.split([' ', '{']).next().unwrap();
        let found = section.contains(name) || section.contains(&name.to_uppercase());
        assert!(found, "README lifecycle diagram lacks {name}");
        assert_eq!(
            state.is_final(),
            section.contains(&name.to_uppercase()),
            "{name}: final states are in capitals"
        );
    }
}
