//! Status conditions as the Kubernetes API conventions describe them.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// Condition type that every resource of this operator publishes.
pub const READY: &str = "Ready";

/// Builds a condition, keeping `lastTransitionTime` from `previous` when the
/// status did not change, as the API conventions ask.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
) -> Condition {
    condition_at(previous, type_, status, reason, message, observed_generation, Timestamp::now())
}

/// [`condition`] with the time a transition happens at given (for pure code).
pub fn condition_at(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.into(),
        last_transition_time,
        observed_generation,
    }
}

/// Replaces the condition of the same type in `conditions`, or appends it.
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => *existing = new,
        None => conditions.push(new),
    }
}

/// Whether two conditions are the same but for their messages (a message
/// alone is progress that can wait).
pub fn equal_but_message(a: &Condition, b: &Condition) -> bool {
    let Condition { type_, status, reason, message: _, last_transition_time, observed_generation } = a;
    *type_ == b.type_
        && *status == b.status
        && *reason == b.reason
        && *last_transition_time == b.last_transition_time
        && *observed_generation == b.observed_generation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_is_kept_while_status_is_unchanged() {
        let first = condition(&[], READY, true, "Ok", "fine", Some(1));
        let again = condition(std::slice::from_ref(&first), READY, true, "Ok", "still fine", Some(2));
        assert_eq!(first.last_transition_time, again.last_transition_time);
        assert_eq!(again.observed_generation, Some(2));

        let flipped = condition(std::slice::from_ref(&first), READY, false, "Broken", "no", Some(2));
        assert_eq!(flipped.status, "False");
        assert!(flipped.last_transition_time.0 >= first.last_transition_time.0);
    }

    #[test]
    fn set_condition_replaces_by_type() {
        let mut all = vec![condition(&[], READY, false, "A", "a", None)];
        set_condition(&mut all, condition(&[], READY, true, "B", "b", None));
        set_condition(&mut all, condition(&[], "Other", true, "C", "c", None));
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].reason, "B");
    }
}
