//! The rules check behind one small trait: the key server decides with the rules it holds (an
//! `authz::Evaluator`, fed by ARDS in production), never with anything the client asserts.

use std::sync::{Arc, RwLock};

use authz::{AccessRequest, Evaluator};

/// The outcome of a rules check for one access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleVerdict {
    pub allowed: bool,
    /// The rules that permit the access (empty when denied).
    pub rule_ids: Vec<String>,
    /// When the permission ends: the latest `not_after` among the permitting rules.
    pub until: Option<i64>,
}

impl RuleVerdict {
    pub fn deny() -> Self {
        RuleVerdict {
            allowed: false,
            rule_ids: Vec::new(),
            until: None,
        }
    }
}

/// Decides one access with the rules the key server currently holds.
pub trait RuleCheck: Send + Sync + 'static {
    fn check(&self, req: &AccessRequest<'_>) -> RuleVerdict;
}

/// Evaluates `req` and finds the permitting rules' end of window.
pub fn verdict(evaluator: &Evaluator, req: &AccessRequest<'_>) -> RuleVerdict {
    let decision = evaluator.decide(req);
    if !decision.allowed {
        return RuleVerdict::deny();
    }
    let until = evaluator
        .rules()
        .iter()
        .filter(|r| decision.rule_ids.contains(&r.id))
        .map(|r| r.not_after)
        .max();
    // A decision whose rules cannot be found again is not trusted (fail closed).
    match until {
        Some(end) if end > req.now => RuleVerdict {
            allowed: true,
            rule_ids: decision.rule_ids,
            until: Some(end),
        },
        _ => RuleVerdict::deny(),
    }
}

impl RuleCheck for Evaluator {
    fn check(&self, req: &AccessRequest<'_>) -> RuleVerdict {
        verdict(self, req)
    }
}

/// A rule set that can be replaced at run time (tests, a rules file reloaded by an operator).
#[derive(Debug)]
pub struct SwappableRules(RwLock<Arc<Evaluator>>);

impl SwappableRules {
    pub fn new(evaluator: Evaluator) -> Self {
        SwappableRules(RwLock::new(Arc::new(evaluator)))
    }
    pub fn replace(&self, evaluator: Evaluator) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(evaluator);
    }
    fn current(&self) -> Arc<Evaluator> {
        Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }
}

impl RuleCheck for SwappableRules {
    fn check(&self, req: &AccessRequest<'_>) -> RuleVerdict {
        verdict(&self.current(), req)
    }
}

/// Rules from ARDS: the current verified, unexpired rules of the `keyserver` PEP.
pub struct ArdsRules(pub ards_client::RulesClient);

impl RuleCheck for ArdsRules {
    fn check(&self, req: &AccessRequest<'_>) -> RuleVerdict {
        verdict(&self.0.evaluator(), req)
    }
}

/// Rules from an ARDS subscription made after the key server started (ARDS authenticates the
/// key server with the service certificate the key server makes at first start). Until the
/// subscription is set, every check is denied.
#[derive(Debug, Default, Clone)]
pub struct LateRules(pub Arc<std::sync::OnceLock<Arc<ards_client::RulesClient>>>);

impl LateRules {
    /// Sets the subscription (once; later calls are ignored).
    pub fn set(&self, rules: Arc<ards_client::RulesClient>) {
        let _ = self.0.set(rules);
    }
}

impl RuleCheck for LateRules {
    fn check(&self, req: &AccessRequest<'_>) -> RuleVerdict {
        match self.0.get() {
            Some(rules) => verdict(&rules.evaluator(), req),
            None => RuleVerdict::deny(),
        }
    }
}
