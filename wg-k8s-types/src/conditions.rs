//! Condition types and reasons the resources' statuses use, and the one
//! rule for updating a condition list (metav1.Condition semantics).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The object is in effect (network usable, peer applied, interface up).
pub const READY: &str = "Ready";
/// A network's pools have no free block for a node.
pub const POOLS_EXHAUSTED: &str = "PoolsExhausted";
/// An attachment is taken as a mesh peer by the other members (False: it
/// is ignored, the reason says why).
pub const MESH_MEMBER: &str = "MeshMember";

/// Reason: the spec breaks a rule the apiserver did not check (an object
/// stored under an older CRD).
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
/// Reason: a peer's preshared key Secret or key is missing or not a key.
pub const REASON_SECRET_NOT_FOUND: &str = "SecretNotFound";
/// Reason: a peer's preshared key Secret is in a namespace that did not
/// let the agent read Secrets (no RoleBinding of `wg-agent-preshared-keys`).
pub const REASON_SECRET_FORBIDDEN: &str = "SecretForbidden";
/// Reason: a peer's endpoint is outside its network's `peerEndpoints`.
pub const REASON_ENDPOINT_NOT_ALLOWED: &str = "EndpointNotAllowed";
/// Reason: the referenced WireGuardNetwork does not exist.
pub const REASON_NETWORK_NOT_FOUND: &str = "NetworkNotFound";
/// Reason: an address an attachment publishes lies outside its node's
/// address blocks, so no member routes it there.
pub const REASON_ADDRESS_NOT_OWNED: &str = "AddressNotOwned";
/// Reason: everything is applied.
pub const REASON_APPLIED: &str = "Applied";

/// `"True"`, `"False"` as conditions spell them.
pub fn status_word(ok: bool) -> &'static str {
    if ok {
        "True"
    } else {
        "False"
    }
}

/// Put `new` in `conditions`, replacing the one of the same type. The
/// last transition time stays the old one when the status did not change
/// (so it tells when the status last flipped, not when it was last written).
/// Returns whether anything changed (status, reason, message or generation):
/// a caller writes the status only then.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            let changed = old.status != new.status
                || old.reason != new.reason
                || old.message != new.message
                || old.observed_generation != new.observed_generation;
            *old = new;
            changed
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

/// A condition with the given fields, transition time `now`.
pub fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status_word(ok).to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn transition_time_kept_while_status_holds() {
        let t = |s: i64| Time(Timestamp::from_second(s).unwrap());
        let mut cs = Vec::new();
        assert!(set_condition(
            &mut cs,
            condition(READY, true, REASON_APPLIED, "ok", Some(1), t(10))
        ));
        assert!(!set_condition(
            &mut cs,
            condition(READY, true, REASON_APPLIED, "ok", Some(1), t(20))
        ));
        assert_eq!(cs[0].last_transition_time, t(10));
        assert!(set_condition(
            &mut cs,
            condition(READY, true, REASON_APPLIED, "ok", Some(2), t(30))
        ));
        assert_eq!(cs[0].last_transition_time, t(10));
        assert!(set_condition(
            &mut cs,
            condition(READY, false, REASON_SECRET_NOT_FOUND, "no", Some(2), t(40))
        ));
        assert_eq!(cs[0].last_transition_time, t(40));
        assert!(set_condition(
            &mut cs,
            condition(POOLS_EXHAUSTED, false, "Free", "", None, t(50))
        ));
        assert_eq!(cs.len(), 2);
    }
}
