//! Every relative link in the repository's Markdown resolves: the file exists and an anchor names
//! a heading of it (GitHub's anchor rules), so moving a section cannot leave a dead link behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Markdown files users read: the top level, `docs/`, each crate's own.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                // Build output and third-party code carry their own docs.
                if !name.starts_with('.') && name != "target" && name != "vendor" {
                    dirs.push(path);
                }
            } else if name.ends_with(".md") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped (but `-` and `_`), spaces as
/// `-`; a repeated heading gets `-1`, `-2`, ….
fn anchor(text: &str, seen: &mut HashMap<String, usize>) -> String {
    let base: String = text
        .chars()
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect();
    let n = seen.entry(base.clone()).or_insert(0);
    let slug = if *n == 0 {
        base.clone()
    } else {
        format!("{base}-{n}")
    };
    *n += 1;
    slug
}

struct Doc {
    anchors: Vec<String>,
    links: Vec<String>,
}

fn read_doc(path: &Path) -> Doc {
    let text = std::fs::read_to_string(path).unwrap();
    let (mut anchors, mut links, mut seen) = (Vec::new(), Vec::new(), HashMap::new());
    let mut heading: Option<String> = None;
    for event in Parser::new_ext(&text, Options::ENABLE_TABLES) {
        match event {
            Event::Start(Tag::Heading { level, .. }) if level <= HeadingLevel::H6 => {
                heading = Some(String::new())
            }
            Event::End(TagEnd::Heading(_)) => {
                anchors.push(anchor(&heading.take().unwrap_or_default(), &mut seen))
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::Start(Tag::Link { dest_url, .. }) => links.push(dest_url.into_string()),
            _ => {}
        }
    }
    Doc { anchors, links }
}

#[test]
fn every_relative_link_resolves() {
    let root = repo();
    let files = markdown_files(&root);
    assert!(files.iter().any(|f| f.ends_with("docs/guide.md")));
    let mut broken = Vec::new();
    for file in &files {
        for link in read_doc(file).links {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (target, fragment) = match link.split_once('#') {
                Some((t, f)) => (t, Some(f)),
                None => (link.as_str(), None),
            };
            let target = if target.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(target)
            };
            let shown = file.strip_prefix(&root).unwrap().display();
            if !target.exists() {
                broken.push(format!("{shown}: {link} (no such file)"));
            } else if let Some(fragment) = fragment {
                let is_md = target.extension().is_some_and(|e| e == "md");
                if is_md && !read_doc(&target).anchors.iter().any(|a| a == fragment) {
                    broken.push(format!("{shown}: {link} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "dead links:\n{}", broken.join("\n"));
}

#[test]
fn anchors_follow_github() {
    let mut seen = HashMap::new();
    assert_eq!(
        anchor("Session handoff: `csap login` → the mount", &mut seen),
        "session-handoff-csap-login--the-mount"
    );
    assert_eq!(anchor("Mount flags", &mut seen), "mount-flags");
    assert_eq!(anchor("Mount flags", &mut seen), "mount-flags-1");
}
