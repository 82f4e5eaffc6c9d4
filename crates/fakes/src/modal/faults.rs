//! Injected faults: what a test can make the fake answer instead of (or besides) the
//! real behaviour, and how a server-directed retry is encoded (docs/modal.md §1.5).

use std::time::Duration;

use prost::Message as _;
use tonic::{Code, Status};

use modal_proto::{AnyMessage, RpcRetryPolicy, RpcStatus};

/// `type_url` of the retry policy inside `grpc-status-details-bin`, as Modal sends it.
pub const RETRY_POLICY_TYPE_URL: &str = "type.googleapis.com/modal.client.RPCRetryPolicy";

/// A rule: the next `times` calls of `rpc` suffer `fault`.
#[derive(Debug, Clone)]
pub struct ModalFault {
    /// Method name (e.g. `"SandboxCreate"`) or `"*"` for every method.
    pub rpc: &'static str,
    /// How many matching calls the rule affects before it is used up.
    pub times: usize,
    /// What happens to those calls.
    pub fault: FaultKind,
}

impl ModalFault {
    /// A rule for the next `times` calls of `rpc`.
    pub fn new(rpc: &'static str, times: usize, fault: FaultKind) -> Self {
        Self { rpc, times, fault }
    }

    fn matches(&self, rpc: &str) -> bool {
        self.times > 0 && (self.rpc == "*" || self.rpc == rpc)
    }
}

/// What an injected fault does to a call (always after authentication succeeded).
#[derive(Debug, Clone)]
pub enum FaultKind {
    /// Answer this status without doing anything.
    Status(Code, String),
    /// Answer RESOURCE_EXHAUSTED without doing anything; with `Some(secs)` the status
    /// details carry Modal's `RPCRetryPolicy`, telling the client when to retry.
    ResourceExhausted {
        /// Server-directed delay before the retry.
        retry_after_secs: Option<f32>,
    },
    /// Sleep, then behave normally.
    Delay(Duration),
    /// Perform the call for real, then answer this code anyway: a lost response.
    AfterSuccess(Code),
    /// Perform the call for real, deliver only the first `after_messages` messages of its
    /// answer, then end it: with `Some(code)` as that status (a connection reset mid-stream),
    /// with `None` cleanly but early, without the rest (a proxy closing it). What was not
    /// delivered is not lost on the server: a stream reopened from the last delivered
    /// `entry_id` resumes after it. A unary answer is one message.
    BreakStream {
        after_messages: usize,
        code: Option<Code>,
    },
}

/// The injected rules, in injection order; the first matching one fires.
#[derive(Debug, Default)]
pub(crate) struct FaultTable {
    rules: Vec<ModalFault>,
}

impl FaultTable {
    /// Adds a rule behind the existing ones. Rules with `times == 0` are ignored.
    pub(crate) fn push(&mut self, rule: ModalFault) {
        if rule.times > 0 {
            self.rules.push(rule);
        }
    }

    /// Uses up one firing of the first rule matching `rpc`, dropping used-up rules.
    pub(crate) fn take(&mut self, rpc: &str) -> Option<FaultKind> {
        let index = self.rules.iter().position(|rule| rule.matches(rpc))?;
        let rule = &mut self.rules[index];
        rule.times -= 1;
        let fault = rule.fault.clone();
        if rule.times == 0 {
            self.rules.remove(index);
        }
        Some(fault)
    }
}

/// RESOURCE_EXHAUSTED as Modal's throttling answers it: with `retry_after_secs`, the
/// details are an encoded `RPCStatus` holding one `Any` with an `RPCRetryPolicy`.
pub(crate) fn resource_exhausted(message: &str, retry_after_secs: Option<f32>) -> Status {
    let Some(retry_after_secs) = retry_after_secs else {
        return Status::new(Code::ResourceExhausted, message);
    };
    let policy = RpcRetryPolicy { retry_after_secs };
    let details = RpcStatus {
        code: Code::ResourceExhausted as i32,
        message: message.to_owned(),
        details: vec![AnyMessage {
            type_url: RETRY_POLICY_TYPE_URL.to_owned(),
            value: policy.encode_to_vec(),
        }],
    };
    Status::with_details(Code::ResourceExhausted, message, details.encode_to_vec().into())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn the_first_matching_rule_fires_and_is_used_up() {
        // Arrange
        let mut table = FaultTable::default();
        table.push(ModalFault::new(
            "SandboxCreate",
            1,
            FaultKind::Delay(Duration::ZERO),
        ));
        table.push(ModalFault::new(
            "*",
            2,
            FaultKind::Status(Code::Internal, "x".into()),
        ));

        // Act
        let first = table.take("SandboxCreate");
        let second = table.take("SandboxCreate");
        let third = table.take("SandboxList");
        let fourth = table.take("SandboxList");

        // Assert
        assert!(matches!(first, Some(FaultKind::Delay(_))));
        assert!(matches!(second, Some(FaultKind::Status(Code::Internal, _))));
        assert!(matches!(third, Some(FaultKind::Status(Code::Internal, _))));
        assert!(fourth.is_none(), "all rules are used up");
    }

    #[test]
    fn a_retry_policy_round_trips_through_the_status_details() {
        let status = resource_exhausted("slow down", Some(2.5));
        let decoded = RpcStatus::decode(status.details()).expect("details decode");
        assert_eq!(decoded.code, Code::ResourceExhausted as i32);
        assert_eq!(decoded.details.len(), 1);
        assert_eq!(decoded.details[0].type_url, RETRY_POLICY_TYPE_URL);
        let policy = RpcRetryPolicy::decode(decoded.details[0].value.as_slice()).expect("policy");
        assert!((policy.retry_after_secs - 2.5).abs() < f32::EPSILON);
    }
}
