//! The rule evaluator every PEP runs (key server and mount): allow/deny for one access, with the
//! deciding rule ids. Deny by default.
//!
//! Cedar is the source of truth. To answer in microseconds with thousands of live rules,
//! `Evaluator::new` compiles each rule whose policy has the shape the authz templates produce
//! (`principal ==`, an action list, and a `when` conjunction over `context.now`,
//! `context.device`, `context.application` and asset selectors) into a small [`Matcher`], and
//! indexes it under every (participant, device, application) combination it names. A decision
//! hashes the request's three fixed parts, checks the few candidates found, and runs Cedar only
//! for rules that did not compile (hand-written policies of any other shape). Tests check that
//! the fast path and full Cedar evaluation agree on randomized rules and requests.
//!
//! Path patterns are [`crate::glob`]'s (`*` within a segment, `**` across), which Cedar's
//! `like` cannot express: its `*` crosses `/`. So paths are always decided by the glob matcher,
//! on compiled rules; a rule whose wildcard pattern could only be judged by Cedar — one that
//! does not compile, or one issued before the dialect (no `@paths("glob")`, when `*` crossed
//! `/`) — is refused at load, naming the rule.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};
use std::sync::OnceLock;

use cedar_policy::{Authorizer, Policy, PolicyId, PolicySet};
use serde_json::Value;

use crate::model::{self, Action};
use crate::rule::Rule;
use crate::template::RuleSpec;

/// One access to decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessRequest<'a> {
    /// User name, e.g. `alice`.
    pub participant: &'a str,
    /// Lowercase hex BLAKE3 of the executable.
    pub application_digest: &'a str,
    /// Device name, e.g. `ws-07`.
    pub device: &'a str,
    /// Path relative to the volume root, `/`-separated, e.g. `show/seq1/shot010/f0001.exr`.
    pub asset_path: &'a str,
    /// Key scope the asset is encrypted under, e.g. `shot010`.
    pub asset_scope: &'a str,
    pub action: Action,
    /// Unix seconds.
    pub now: i64,
}

/// The answer: allowed, and which rules allowed it (empty when denied).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    pub allowed: bool,
    pub rule_ids: Vec<String>,
}

impl Decision {
    fn from_ids(mut rule_ids: Vec<String>) -> Self {
        rule_ids.sort();
        Self {
            allowed: !rule_ids.is_empty(),
            rule_ids,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("rule {rule_id}: invalid Cedar: {message}")]
    Parse { rule_id: String, message: String },
    #[error("rule {rule_id}: rules may only permit (CSAP is deny-by-default)")]
    NotPermit { rule_id: String },
    #[error("rule {rule_id}: does not validate against the Csap schema: {message}")]
    Invalid { rule_id: String, message: String },
    #[error("rule id {rule_id} appears twice with different contents")]
    Duplicate { rule_id: String },
    #[error("rule {rule_id}: a wildcard path pattern from before the current dialect, when '*' crossed '/' (the rule has no @paths(\"glob\")); re-issue it from authz, writing '**' where '*' was meant to cross '/'")]
    OldPathDialect { rule_id: String },
    #[error("rule {rule_id}: {message}")]
    Delegation { rule_id: String, message: String },
    #[error("rule {rule_id}: a wildcard path pattern in a rule of a shape only Cedar evaluates, whose 'like' would let '*' cross '/'; use the template shape or exact paths")]
    UncheckablePattern { rule_id: String },
}

/// A rule compiled to plain Rust checks (equivalent to its Cedar policy).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Matcher {
    participant: String,
    actions: u8,
    devices: Vec<String>,
    applications: Vec<String>,
    /// `context.now >= now_min`
    now_min: i64,
    /// `context.now < now_end`
    now_end: i64,
    /// Disjunction of (path like P && scope == S) selectors; `None` parts are unconstrained.
    assets: Vec<(Option<String>, Option<String>)>,
}

impl Matcher {
    fn from_spec(spec: &RuleSpec) -> Self {
        Self {
            participant: spec.participant.clone(),
            actions: spec.actions.iter().fold(0, |m, a| m | a.bit()),
            devices: spec.devices.clone(),
            applications: spec.applications.clone(),
            now_min: spec.not_before,
            now_end: spec.not_after,
            assets: spec
                .assets
                .iter()
                .map(|a| (a.path.clone(), a.scope.clone()))
                .collect(),
        }
    }

    fn has_wildcard(&self) -> bool {
        self.assets
            .iter()
            .any(|(p, _)| p.as_deref().is_some_and(crate::glob::has_wildcard))
    }

    /// The asset selectors alone (for the Cedar reference path, whose `like` is wider).
    fn matches_asset(&self, req: &AccessRequest<'_>) -> bool {
        self.assets.iter().any(|(path, scope)| {
            path.as_deref()
                .is_none_or(|p| crate::glob::matches(p, req.asset_path))
                && scope.as_deref().is_none_or(|s| s == req.asset_scope)
        })
    }

    fn matches(&self, req: &AccessRequest<'_>) -> bool {
        self.participant == req.participant
            && self.actions & req.action.bit() != 0
            && self.now_min <= req.now
            && req.now < self.now_end
            && self.devices.iter().any(|d| d == req.device)
            && self
                .applications
                .iter()
                .any(|a| a == req.application_digest)
            && self.assets.iter().any(|(path, scope)| {
                path.as_deref()
                    .is_none_or(|p| crate::glob::matches(p, req.asset_path))
                    && scope.as_deref().is_none_or(|s| s == req.asset_scope)
            })
    }
}

/// Evaluates a PEP's rule set. `Send + Sync`; build once per rule-set change, share by `Arc`.
pub struct Evaluator {
    rules: Vec<Rule>,
    matchers: Vec<Option<Matcher>>,
    /// Hash of (participant, device, application) → indexes of compiled rules.
    index: HashMap<u64, Vec<u32>>,
    /// Rules that did not compile; decided by Cedar on every request.
    fallback: PolicySet,
    fallback_count: usize,
    /// Rule id → index into `rules`.
    by_id: HashMap<String, u32>,
    /// Every rule parsed by Cedar, built on first use by the reference path.
    all: OnceLock<PolicySet>,
}

impl std::fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator")
            .field("rules", &self.rules.len())
            .field("fallback", &self.fallback_count)
            .finish()
    }
}

fn key(participant: &str, device: &str, application: &str) -> u64 {
    let mut h = DefaultHasher::new();
    for part in [participant, device, application] {
        h.write(part.as_bytes());
        // 0xff never occurs in UTF-8, so the parts cannot run into each other.
        h.write_u8(0xff);
    }
    h.finish()
}

impl Evaluator {
    /// Parses, validates (against the Csap schema) and indexes `rules`. Identical duplicates
    /// are merged; anything that is not a single schema-valid `permit` is rejected.
    pub fn new(rules: impl IntoIterator<Item = Rule>) -> Result<Self, EvalError> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut kept: Vec<Rule> = Vec::new();
        for r in rules {
            match seen.get(&r.id) {
                Some(&i) if kept[i] == r => continue,
                Some(_) => return Err(EvalError::Duplicate { rule_id: r.id }),
                None => {
                    seen.insert(r.id.clone(), kept.len());
                    kept.push(r);
                }
            }
        }
        // Every rule that went through the Cedar parser; validated against the schema below.
        // Template-rendered rules skip the parser (see `RuleSpec::from_rendered`): their
        // text is byte-identical to a rendering the tests validate and compare with Cedar.
        let mut parsed = PolicySet::new();
        let mut fallback = PolicySet::new();
        let mut fallback_count = 0;
        let mut matchers = Vec::with_capacity(kept.len());
        let mut index: HashMap<u64, Vec<u32>> = HashMap::new();
        for (i, r) in kept.iter().enumerate() {
            let parse_err = |message: String| EvalError::Parse {
                rule_id: r.id.clone(),
                message,
            };
            let matcher = match RuleSpec::from_rendered(&r.policy) {
                // The renderer always marks its rules `@paths("glob")`.
                Some(spec) => Some(Matcher::from_spec(&spec)),
                None => {
                    let policy = Policy::parse(Some(PolicyId::new(&r.id)), &r.policy)
                        .map_err(|e| parse_err(e.to_string()))?;
                    if policy.effect() != cedar_policy::Effect::Permit {
                        return Err(EvalError::NotPermit {
                            rule_id: r.id.clone(),
                        });
                    }
                    let est = policy.to_json().ok();
                    let m = est.as_ref().and_then(compile);
                    let rule_id = || r.id.clone();
                    match &m {
                        Some(m)
                            if policy.annotation(crate::glob::RULE_ANNOTATION)
                                != Some(crate::glob::RULE_ANNOTATION_VALUE)
                                && m.has_wildcard() =>
                        {
                            return Err(EvalError::OldPathDialect { rule_id: rule_id() });
                        }
                        // Without an EST we cannot see its patterns: refuse any `like`.
                        None if est
                            .as_ref()
                            .map_or(r.policy.contains("like"), has_wildcard_like) =>
                        {
                            return Err(EvalError::UncheckablePattern { rule_id: rule_id() });
                        }
                        _ => {}
                    }
                    if m.is_none() {
                        fallback
                            .add(policy.clone())
                            .map_err(|e| parse_err(e.to_string()))?;
                        fallback_count += 1;
                    }
                    parsed.add(policy).map_err(|e| parse_err(e.to_string()))?;
                    m
                }
            };
            check_delegation_shape(r, matcher.as_ref())?;
            // A delegation rule bounds an organization's rules; it never grants by itself.
            if let Some(m) = matcher.as_ref().filter(|_| r.delegates_to.is_none()) {
                for d in &m.devices {
                    for a in &m.applications {
                        index
                            .entry(key(&m.participant, d, a))
                            .or_default()
                            .push(i as u32);
                    }
                }
            }
            matchers.push(matcher);
        }
        if parsed.policies().next().is_some() {
            let result = cedar_policy::Validator::new(model::schema().clone())
                .validate(&parsed, cedar_policy::ValidationMode::Strict);
            let first = result
                .validation_errors()
                .next()
                .map(|e| (e.policy_id().to_string(), e.to_string()));
            if let Some((rule_id, message)) = first {
                return Err(EvalError::Invalid { rule_id, message });
            }
        }
        // A rule listed under the same key twice (e.g. a device named twice) is checked once.
        for v in index.values_mut() {
            v.dedup();
        }
        Ok(Self {
            rules: kept,
            matchers,
            index,
            fallback,
            fallback_count,
            by_id: seen.into_iter().map(|(k, v)| (k, v as u32)).collect(),
            all: OnceLock::new(),
        })
    }

    /// Allow or deny; deny by default. The rule envelope's window is checked as well as the
    /// policy's own `context.now` conditions.
    pub fn decide(&self, req: &AccessRequest<'_>) -> Decision {
        let mut ids = Vec::new();
        if let Some(cands) =
            self.index
                .get(&key(req.participant, req.device, req.application_digest))
        {
            for &i in cands {
                let i = i as usize;
                if self.rules[i].in_window(req.now)
                    && self.matchers[i].as_ref().is_some_and(|m| m.matches(req))
                    && self.within_delegation(i, req)
                {
                    ids.push(self.rules[i].id.clone());
                }
            }
        }
        if self.fallback_count > 0 {
            let allowed = self.cedar_allowing(&self.fallback, req);
            ids.extend(allowed.into_iter().filter(|id| {
                self.by_id
                    .get(id)
                    .is_some_and(|&i| self.within_delegation(i as usize, req))
            }));
        }
        Decision::from_ids(ids)
    }

    /// The reference path: every rule through Cedar, no index. Slow; for tests and audits.
    pub fn decide_cedar(&self, req: &AccessRequest<'_>) -> Decision {
        let all = self.all.get_or_init(|| {
            let mut set = PolicySet::new();
            for r in &self.rules {
                // Every rule parsed in `new` or is a template rendering, which parses; a
                // failure here would only drop a permit (fail closed).
                if let Ok(p) = Policy::parse(Some(PolicyId::new(&r.id)), &r.policy) {
                    let _ = set.add(p);
                }
            }
            set
        });
        // Cedar's `like` lets `*` cross `/`: a permit by Cedar is necessary, and the glob
        // decides the path (only compiled rules may hold wildcard patterns).
        let ids = self
            .cedar_allowing(all, req)
            .into_iter()
            .filter(|id| {
                self.by_id.get(id).is_some_and(|&i| {
                    self.matchers[i as usize]
                        .as_ref()
                        .is_none_or(|m| m.matches_asset(req))
                        && self.within_delegation(i as usize, req)
                })
            })
            .collect();
        Decision::from_ids(ids)
    }

    fn cedar_allowing(&self, set: &PolicySet, req: &AccessRequest<'_>) -> Vec<String> {
        let Some((request, entities)) = model::cedar_request(req) else {
            // Names Cedar cannot represent cannot be in any rule: deny.
            return Vec::new();
        };
        let resp = Authorizer::new().is_authorized(&request, set, &entities);
        if resp.decision() != cedar_policy::Decision::Allow {
            return Vec::new();
        }
        resp.diagnostics()
            .reason()
            .filter_map(|pid| {
                let id = pid.to_string();
                self.rule_by_id(&id)
                    .filter(|r| r.in_window(req.now))
                    .map(|_| id)
            })
            .collect()
    }

    /// Whether rule `i`, already found to permit `req`, may grant it: a production rule may; a
    /// delegation rule never does; an organization rule only while the production delegation
    /// it names is loaded, issued to that same organization, in its window, and permits the
    /// same access with the organization as principal (the intersection: both must permit).
    fn within_delegation(&self, i: usize, req: &AccessRequest<'_>) -> bool {
        let rule = &self.rules[i];
        if rule.delegates_to.is_some() {
            return false;
        }
        let Some(delegation_id) = &rule.delegated_by else {
            return true;
        };
        let Some(&d) = self.by_id.get(delegation_id) else {
            return false;
        };
        let delegation = &self.rules[d as usize];
        let Some(org) = delegation.delegates_to.as_deref() else {
            return false;
        };
        org == rule.issuer
            && delegation.in_window(req.now)
            && self.matchers[d as usize].as_ref().is_some_and(|m| {
                m.matches(&AccessRequest {
                    participant: org,
                    ..*req
                })
            })
    }

    /// The organization rules loaded that cannot grant anything now — their delegation is
    /// missing, issued to another organization, or out of its window — with the reason, so a
    /// PEP can report them. (A rule partly outside its delegation grants only the overlap.)
    pub fn orphaned_delegated_rules(&self, now: i64) -> Vec<(String, String)> {
        self.rules
            .iter()
            .filter_map(|r| {
                let d = r.delegated_by.as_deref()?;
                let why = match self.rule_by_id(d) {
                    None => {
                        format!("delegation {d:?} is not loaded (revoked, expired or never issued)")
                    }
                    Some(dr) if dr.delegates_to.as_deref() != Some(r.issuer.as_str()) => {
                        format!("delegation {d:?} does not delegate to {:?}", r.issuer)
                    }
                    Some(dr) if !dr.in_window(now) => {
                        format!("delegation {d:?} is outside its window")
                    }
                    Some(_) => return None,
                };
                Some((r.id.clone(), why))
            })
            .collect()
    }

    fn rule_by_id(&self, id: &str) -> Option<&Rule> {
        self.by_id.get(id).map(|&i| &self.rules[i as usize])
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// How many rules compiled to the fast path (the rest go through Cedar per request).
    pub fn compiled_count(&self) -> usize {
        self.matchers.iter().filter(|m| m.is_some()).count()
    }
}

/// Load-time checks of the delegation fields: a rule is either a delegation (`delegates_to`)
/// or delegated (`delegated_by`), not both; a delegation must compile to the fast path (so
/// PEPs can evaluate it with the organization as principal) and name that organization as its
/// principal.
fn check_delegation_shape(rule: &Rule, matcher: Option<&Matcher>) -> Result<(), EvalError> {
    let problem = match (&rule.delegates_to, &rule.delegated_by) {
        (Some(_), Some(_)) => Some("a rule cannot both delegate and be delegated".to_string()),
        (Some(org), None) => match matcher {
            None => Some("a delegation rule must have the template shape (principal ==, actions, devices, applications, assets, window)".into()),
            Some(m) if &m.participant != org => Some(format!(
                "a delegation to {org:?} must have the organization as its principal, not {:?}",
                m.participant
            )),
            Some(_) => None,
        },
        (None, Some(d)) if d.is_empty() => Some("delegated_by is empty".into()),
        _ => None,
    };
    match problem {
        Some(message) => Err(EvalError::Delegation {
            rule_id: rule.id.clone(),
            message,
        }),
        None => Ok(()),
    }
}

// ---- compiling a policy's JSON form (Cedar EST) into a Matcher ----

fn entity_of(v: &Value, ty: &str) -> Option<String> {
    // Scope form: {"type":..,"id":..}; expression form: {"Value":{"__entity":{..}}}.
    let e = v
        .get("Value")
        .and_then(|x| x.get("__entity"))
        .or_else(|| v.get("__entity"))
        .unwrap_or(v);
    if e.get("type")?.as_str()? != ty {
        return None;
    }
    Some(e.get("id")?.as_str()?.to_string())
}

fn is_attr(v: &Value, var: &str, attr: &str) -> bool {
    v.get(".").is_some_and(|dot| {
        dot.get("attr").and_then(Value::as_str) == Some(attr)
            && dot
                .get("left")
                .and_then(|l| l.get("Var"))
                .and_then(Value::as_str)
                == Some(var)
    })
}

fn binop<'a>(v: &'a Value, op: &str) -> Option<(&'a Value, &'a Value)> {
    let b = v.get(op)?;
    Some((b.get("left")?, b.get("right")?))
}

fn flatten<'a>(v: &'a Value, op: &str, out: &mut Vec<&'a Value>) {
    match binop(v, op) {
        Some((l, r)) => {
            flatten(l, op, out);
            flatten(r, op, out);
        }
        None => out.push(v),
    }
}

fn long_of(v: &Value) -> Option<i64> {
    v.get("Value")?.as_i64()
}

fn string_of(v: &Value) -> Option<String> {
    Some(v.get("Value")?.as_str()?.to_string())
}

/// `X == Entity` or `[Entity, ..].contains(X)` for X = context.<attr>.
fn membership(v: &Value, attr: &str, ty: &str) -> Option<Vec<String>> {
    if let Some((l, r)) = binop(v, "==") {
        if is_attr(l, "context", attr) {
            return Some(vec![entity_of(r, ty)?]);
        }
        return None;
    }
    let (l, r) = binop(v, "contains")?;
    if !is_attr(r, "context", attr) {
        return None;
    }
    let items = l
        .get("Set")
        .and_then(Value::as_array)
        .or_else(|| l.get("Value").and_then(Value::as_array))?;
    let ids = items
        .iter()
        .map(|i| entity_of(i, ty))
        .collect::<Option<Vec<_>>>()?;
    (!ids.is_empty()).then_some(ids)
}

fn like_pattern(v: &Value) -> Option<String> {
    let like = v.get("like")?;
    if !is_attr(like.get("left")?, "resource", "path") {
        return None;
    }
    let mut out = String::new();
    for el in like.get("pattern")?.as_array()? {
        if el.as_str() == Some("Wildcard") {
            // Kept one for one: `**` (across segments) differs from `*` (within one).
            out.push('*');
        } else {
            let lit = el.get("Literal")?.as_str()?;
            // A literal '*' cannot be expressed in our pattern text; leave it to Cedar.
            if lit.contains('*') {
                return None;
            }
            out.push_str(lit);
        }
    }
    // A pattern outside the glob dialect (`a**`) does not compile; as a fallback rule with a
    // wildcard it is then refused.
    crate::glob::check(&out).ok()?;
    Some(out)
}

/// Whether any `like` in a policy's JSON form has a wildcard.
fn has_wildcard_like(v: &Value) -> bool {
    match v {
        Value::Object(map) => {
            let here = map.get("like").is_some_and(|like| {
                like.get("pattern")
                    .and_then(Value::as_array)
                    .is_some_and(|els| els.iter().any(|e| e.as_str() == Some("Wildcard")))
            });
            here || map.values().any(has_wildcard_like)
        }
        Value::Array(items) => items.iter().any(has_wildcard_like),
        _ => false,
    }
}

fn scope_eq(v: &Value) -> Option<String> {
    let (l, r) = binop(v, "==")?;
    if !is_attr(l, "resource", "scope") {
        return None;
    }
    string_of(r)
}

fn selector(v: &Value) -> Option<(Option<String>, Option<String>)> {
    if let Some(p) = like_pattern(v) {
        return Some((Some(p), None));
    }
    if let Some(s) = scope_eq(v) {
        return Some((None, Some(s)));
    }
    let (l, r) = binop(v, "&&")?;
    match (like_pattern(l), scope_eq(r)) {
        (Some(p), Some(s)) => Some((Some(p), Some(s))),
        _ => None,
    }
}

fn compile(est: &Value) -> Option<Matcher> {
    if est.get("effect")?.as_str()? != "permit" {
        return None;
    }
    let principal = est.get("principal")?;
    if principal.get("op")?.as_str()? != "==" {
        return None;
    }
    let participant = entity_of(principal.get("entity")?, "Csap::Participant")?;

    let action = est.get("action")?;
    let actions = match action.get("op")?.as_str()? {
        "All" => Action::ALL.iter().fold(0, |m, a| m | a.bit()),
        // `in` a single action: the schema declares no action groups, so it equals `==`.
        "==" | "in" if action.get("entity").is_some() => {
            Action::parse(&entity_of(action.get("entity")?, "Csap::Action")?)?.bit()
        }
        "in" => {
            let list = action.get("entities")?.as_array()?;
            let mut m = 0u8;
            for e in list {
                m |= Action::parse(&entity_of(e, "Csap::Action")?)?.bit();
            }
            m
        }
        _ => return None,
    };

    let resource = est.get("resource")?;
    match resource.get("op")?.as_str()? {
        "All" => {}
        "is" if resource.get("entity_type")?.as_str()? == "Csap::Asset"
            && resource.get("in").is_none() => {}
        _ => return None,
    }

    let conditions = est.get("conditions")?.as_array()?;
    let [cond] = conditions.as_slice() else {
        return None;
    };
    if cond.get("kind")?.as_str()? != "when" {
        return None;
    }
    let mut conjuncts = Vec::new();
    flatten(cond.get("body")?, "&&", &mut conjuncts);

    let (mut now_min, mut now_end) = (i64::MIN, i64::MAX);
    let mut devices = None;
    let mut applications = None;
    let mut assets: Option<Vec<(Option<String>, Option<String>)>> = None;
    let (mut top_path, mut top_scope) = (None, None);
    for c in conjuncts {
        // Time bounds on context.now.
        let mut time_bound = None;
        for op in [">=", ">", "<", "<="] {
            if let Some((l, r)) = binop(c, op) {
                if is_attr(l, "context", "now") {
                    time_bound = Some((op, long_of(r)?));
                }
            }
        }
        if let Some((op, n)) = time_bound {
            match op {
                ">=" => now_min = now_min.max(n),
                ">" => now_min = now_min.max(n.checked_add(1)?),
                "<" => now_end = now_end.min(n),
                _ => now_end = now_end.min(n.checked_add(1)?),
            }
            continue;
        }
        if let Some(d) = membership(c, "device", "Csap::Device") {
            if devices.replace(d).is_some() {
                return None;
            }
            continue;
        }
        if let Some(a) = membership(c, "application", "Csap::Application") {
            if applications.replace(a).is_some() {
                return None;
            }
            continue;
        }
        // A single selector `path like P && scope == S` is flattened into the top-level
        // conjunction by the parser, so its two halves arrive here separately.
        if let Some(p) = like_pattern(c) {
            if top_path.replace(p).is_some() {
                return None;
            }
            continue;
        }
        if let Some(sc) = scope_eq(c) {
            if top_scope.replace(sc).is_some() {
                return None;
            }
            continue;
        }
        let mut alts = Vec::new();
        flatten(c, "||", &mut alts);
        let sels = alts.into_iter().map(selector).collect::<Option<Vec<_>>>()?;
        if assets.replace(sels).is_some() {
            return None;
        }
    }
    let assets = match (assets, top_path, top_scope) {
        (Some(sels), None, None) => sels,
        (None, p, s) if p.is_some() || s.is_some() => vec![(p, s)],
        // A disjunction further narrowed by top-level selectors: leave it to Cedar.
        _ => return None,
    };
    Some(Matcher {
        participant,
        actions,
        devices: devices?,
        applications: applications?,
        now_min,
        now_end,
        assets,
    })
}

#[cfg(test)]
mod tests;
