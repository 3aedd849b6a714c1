//! Policy templates: turn one authorization policy request into rules per kind of PEP.
//!
//! For every participant the request names, the templates produce
//! - one **key server** rule (target `keyserver`): the requested actions plus `license`, for any
//!   of the request's devices and applications — the key server sees the device from its mTLS
//!   certificate and the digest from the caller, and licenses keys only when a rule allows;
//! - one **mount** rule per device (target `mount:<device>`): the requested actions except
//!   `license`, bound to that device. No mount rule is made if only `license` was requested.
//!
//! Every rule is a single Cedar `permit` (deny by default) with the window both in the rule
//! envelope and in the policy's `when` clause. Path patterns are [`crate::glob`]'s, written
//! verbatim into `resource.path like` (which Cedar reads more widely) and marked
//! `@paths("glob")`; the evaluator decides them with the glob matcher.

use crate::model::{cedar_str, entity_ref, Action};
use crate::request::{AssetSelector, PolicyRequest};
use crate::rule::Rule;

/// PEP id of the key server.
pub const KEYSERVER_PEP: &str = "keyserver";

/// PEP id of the mount on `device`.
pub fn mount_pep(device: &str) -> String {
    format!("mount:{device}")
}

/// Fixed parts of one rule before it is rendered to Cedar text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    pub id: String,
    pub request_id: String,
    pub task: String,
    pub participant: String,
    pub actions: Vec<Action>,
    pub devices: Vec<String>,
    pub applications: Vec<String>,
    pub assets: Vec<AssetSelector>,
    pub not_before: i64,
    pub not_after: i64,
}

impl RuleSpec {
    /// Renders the Cedar policy text.
    pub fn to_cedar(&self) -> String {
        let actions: Vec<String> = self.actions.iter().map(|a| a.cedar()).collect();
        let mut conds = vec![format!(
            "context.now >= {} && context.now < {}",
            self.not_before, self.not_after
        )];
        conds.push(membership("context.device", "Device", &self.devices));
        conds.push(membership(
            "context.application",
            "Application",
            &self.applications,
        ));
        let assets: Vec<String> = self.assets.iter().map(asset_cond).collect();
        conds.push(if assets.len() == 1 {
            assets[0].clone()
        } else {
            format!("({})", assets.join(" || "))
        });
        format!(
            "@id({id})\n@request({req})\n@task({task})\n@paths(\"glob\")\npermit (\n  principal == {p},\n  action in [{actions}],\n  resource is Csap::Asset\n)\nwhen {{\n  {conds}\n}};\n",
            id = cedar_str(&self.id),
            req = cedar_str(&self.request_id),
            task = cedar_str(&self.task),
            p = entity_ref("Participant", &self.participant),
            actions = actions.join(", "),
            conds = conds.join(" &&\n  "),
        )
    }
}

impl RuleSpec {
    /// Recovers the spec from policy text that is *exactly* what [`RuleSpec::to_cedar`]
    /// renders (checked by re-rendering and comparing bytes), so the text's Cedar meaning is
    /// the one the templates give it. Anything else — other formatting, other shapes — is
    /// `None` and must go through Cedar. This lets PEPs load thousands of template rules
    /// without running the Cedar parser on each.
    pub fn from_rendered(text: &str) -> Option<RuleSpec> {
        let rest = text.strip_prefix("@id(")?;
        let (id, rest) = lit_then(rest, ")\n@request(")?;
        let (request_id, rest) = lit_then(rest, ")\n@task(")?;
        let (task, rest) = lit_then(
            rest,
            ")\n@paths(\"glob\")\npermit (\n  principal == Csap::Participant::",
        )?;
        let (participant, rest) = lit_then(rest, ",\n  action in [")?;
        let (actions_text, rest) =
            rest.split_once("],\n  resource is Csap::Asset\n)\nwhen {\n  ")?;
        let body = rest.strip_suffix("\n};\n")?;
        let actions = actions_text
            .split(", ")
            .map(|a| Action::parse(&unquote(a.strip_prefix("Csap::Action::")?)?))
            .collect::<Option<Vec<_>>>()?;
        let conds: Vec<&str> = body.split(" &&\n  ").collect();
        let [time, device, app, assets] = conds.as_slice() else {
            return None;
        };
        let (nb, na) = time
            .strip_prefix("context.now >= ")?
            .split_once(" && context.now < ")?;
        let spec = RuleSpec {
            id,
            request_id,
            task,
            participant,
            actions,
            devices: parse_membership(device, "context.device", "Device")?,
            applications: parse_membership(app, "context.application", "Application")?,
            assets: parse_assets(assets)?,
            not_before: nb.parse().ok()?,
            not_after: na.parse().ok()?,
        };
        (spec.to_cedar() == text).then_some(spec)
    }
}

/// A string literal without escapes (our renderer only escapes characters inputs may not hold).
fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('"') || inner.contains('\\') {
        return None;
    }
    Some(inner.to_string())
}

/// A literal at the start of `s` followed by `sep`; returns the literal and the rest.
fn lit_then<'a>(s: &'a str, sep: &str) -> Option<(String, &'a str)> {
    let end = s.strip_prefix('"')?.find('"')? + 2;
    let rest = s[end..].strip_prefix(sep)?;
    Some((unquote(&s[..end])?, rest))
}

fn parse_membership(s: &str, expr: &str, kind: &str) -> Option<Vec<String>> {
    let prefix = format!("Csap::{kind}::");
    if let Some(one) = s.strip_prefix(&format!("{expr} == ")) {
        return Some(vec![unquote(one.strip_prefix(&prefix)?)?]);
    }
    let list = s
        .strip_prefix('[')?
        .strip_suffix(&format!("].contains({expr})"))?;
    list.split(", ")
        .map(|e| unquote(e.strip_prefix(&prefix)?))
        .collect()
}

fn parse_selector(s: &str) -> Option<AssetSelector> {
    if let Some(p) = s.strip_prefix("resource.path like ") {
        return Some(AssetSelector {
            path: Some(unquote(p)?),
            scope: None,
        });
    }
    if let Some(sc) = s.strip_prefix("resource.scope == ") {
        return Some(AssetSelector {
            path: None,
            scope: Some(unquote(sc)?),
        });
    }
    let inner = s.strip_prefix("(resource.path like ")?.strip_suffix(')')?;
    let (p, sc) = inner.split_once(" && resource.scope == ")?;
    Some(AssetSelector {
        path: Some(unquote(p)?),
        scope: Some(unquote(sc)?),
    })
}

fn parse_assets(s: &str) -> Option<Vec<AssetSelector>> {
    // One selector, or several joined by " || " inside parentheses. The caller's re-render
    // check rejects any misreading (e.g. " || " inside a path literal).
    if let Some(one) = parse_selector(s) {
        return Some(vec![one]);
    }
    let inner = s.strip_prefix('(')?.strip_suffix(')')?;
    inner.split(" || ").map(parse_selector).collect()
}

fn membership(expr: &str, kind: &str, ids: &[String]) -> String {
    if ids.len() == 1 {
        format!("{expr} == {}", entity_ref(kind, &ids[0]))
    } else {
        let set: Vec<String> = ids.iter().map(|i| entity_ref(kind, i)).collect();
        format!("[{}].contains({expr})", set.join(", "))
    }
}

fn asset_cond(a: &AssetSelector) -> String {
    match (&a.path, &a.scope) {
        (Some(p), Some(s)) => format!(
            "(resource.path like {} && resource.scope == {})",
            cedar_str(p),
            cedar_str(s)
        ),
        (Some(p), None) => format!("resource.path like {}", cedar_str(p)),
        (None, Some(s)) => format!("resource.scope == {}", cedar_str(s)),
        // Parsing guarantees one of the two; an empty selector must match nothing.
        (None, None) => "false".to_string(),
    }
}

/// Applies every template to `req`. Rule ids are `r-<request_id>-<n>` with `n` counting up
/// from `first_index` (so a changed request gets fresh ids).
pub fn rules_for(
    req: &PolicyRequest,
    request_id: &str,
    issuer: &str,
    first_index: u64,
) -> Vec<Rule> {
    let mut n = first_index;
    let mut next_id = || {
        let id = format!("r-{request_id}-{n}");
        n += 1;
        id
    };
    let digests: Vec<String> = req.applications.iter().map(|a| a.digest.clone()).collect();
    let mut specs: Vec<(Vec<String>, RuleSpec)> = Vec::new();
    for p in &req.participants {
        let mut ks_actions = req.actions.clone();
        ks_actions.push(Action::License);
        ks_actions.sort();
        ks_actions.dedup();
        specs.push((
            vec![KEYSERVER_PEP.to_string()],
            RuleSpec {
                id: next_id(),
                request_id: request_id.to_string(),
                task: req.task.clone(),
                participant: p.id.clone(),
                actions: ks_actions,
                devices: req.devices.clone(),
                applications: digests.clone(),
                assets: req.assets.clone(),
                not_before: req.not_before,
                not_after: req.not_after,
            },
        ));
        let mount_actions: Vec<Action> = req
            .actions
            .iter()
            .copied()
            .filter(|a| *a != Action::License)
            .collect();
        if mount_actions.is_empty() {
            continue;
        }
        for d in &req.devices {
            specs.push((
                vec![mount_pep(d)],
                RuleSpec {
                    id: next_id(),
                    request_id: request_id.to_string(),
                    task: req.task.clone(),
                    participant: p.id.clone(),
                    actions: mount_actions.clone(),
                    devices: vec![d.clone()],
                    applications: digests.clone(),
                    assets: req.assets.clone(),
                    not_before: req.not_before,
                    not_after: req.not_after,
                },
            ));
        }
    }
    specs
        .into_iter()
        .map(|(targets, spec)| Rule {
            delegates_to: None,
            delegated_by: None,
            id: spec.id.clone(),
            issuer: issuer.to_string(),
            request_id: request_id.to_string(),
            targets,
            not_before: spec.not_before,
            not_after: spec.not_after,
            policy: spec.to_cedar(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::validate_policies;

    fn example() -> PolicyRequest {
        PolicyRequest::from_json(
            include_bytes!("../../examples/request-shot010.json").as_slice(),
            0,
        )
        .unwrap()
    }

    #[test]
    fn request_yields_rules_for_keyserver_and_each_mount() {
        let mut req = example();
        req.devices.push("rn-01".into());
        req.participants.push(crate::request::Participant {
            id: "bob".into(),
            kind: crate::request::ParticipantKind::Person,
            organization: None,
        });
        let rules = rules_for(&req, "req-1", "authz", 1);
        let targets: Vec<(String, Vec<String>)> = rules
            .iter()
            .map(|r| (r.id.clone(), r.targets.clone()))
            .collect();
        assert_eq!(
            targets,
            vec![
                ("r-req-1-1".into(), vec!["keyserver".into()]),
                ("r-req-1-2".into(), vec!["mount:ws-07".into()]),
                ("r-req-1-3".into(), vec!["mount:rn-01".into()]),
                ("r-req-1-4".into(), vec!["keyserver".into()]),
                ("r-req-1-5".into(), vec!["mount:ws-07".into()]),
                ("r-req-1-6".into(), vec!["mount:rn-01".into()]),
            ]
        );
        assert!(rules[0].policy.contains("Csap::Action::\"license\""));
        assert!(!rules[1].policy.contains("license"));
        assert!(rules[1]
            .policy
            .contains("context.device == Csap::Device::\"ws-07\""));
        assert!(rules[0].policy.contains(".contains(context.device)"));
        assert!(rules.iter().all(|r| r.not_before == req.not_before));
    }

    #[test]
    fn every_generated_policy_validates_against_the_schema() {
        let mut req = example();
        // Exercise every shape: several devices/apps, path+scope selectors, all actions.
        req.devices.push("rn-01".into());
        req.applications.push(crate::request::Application {
            digest: "ab".repeat(32),
            name: None,
            version: None,
            vendor: None,
        });
        req.assets.push(AssetSelector {
            path: Some("show/seq2/*".into()),
            scope: Some("seq2".into()),
        });
        req.actions = Action::ALL.to_vec();
        for r in rules_for(&req, "req-2", "authz", 1)
            .into_iter()
            .chain(rules_for(&example(), "req-3", "authz", 1))
        {
            validate_policies(&r.policy).unwrap_or_else(|e| panic!("{}: {e}\n{}", r.id, r.policy));
        }
    }

    #[test]
    fn rendered_text_parses_back_to_its_spec_and_nothing_else_does() {
        let mut req = example();
        req.devices.push("rn-01".into());
        req.assets.push(AssetSelector {
            path: Some("a || b/*".into()),
            scope: Some("s2".into()),
        });
        for r in rules_for(&req, "req-5", "authz", 1)
            .into_iter()
            .chain(rules_for(&example(), "req-6", "authz", 1))
        {
            let spec = RuleSpec::from_rendered(&r.policy);
            let is_odd = r.policy.contains("a || b");
            // The " || " inside a literal defeats the parser; the re-render check catches it.
            assert_eq!(spec.is_none(), is_odd, "{}", r.policy);
            if let Some(spec) = spec {
                assert_eq!(spec.to_cedar(), r.policy);
                assert_eq!(spec.id, r.id);
            }
            assert!(RuleSpec::from_rendered(&r.policy.replace("\n  ", "\n   ")).is_none());
            assert!(RuleSpec::from_rendered(&r.policy.replace("permit", "forbid")).is_none());
        }
    }

    #[test]
    fn license_only_request_makes_only_keyserver_rules() {
        let mut req = example();
        req.actions = vec![Action::License];
        let rules = rules_for(&req, "req-4", "authz", 1);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].targets, vec!["keyserver".to_string()]);
    }
}
