//! The HTML page of `pnp eval --html`: the summary, then one row per edit:
//! its prompts, the source, and each method's result with its numbers. One
//! self-contained file that links the images by paths relative to itself.

use super::{Method, Row, Summary};
use pnp::metrics::Metric;
use std::fmt::Write;
use std::path::{Component, Path, PathBuf};

pub fn page(
    at: &Path,
    methods: &[Method],
    metrics: &[Metric],
    rows: &[Row],
    summary: &Summary,
) -> String {
    let base = at
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut h = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>pnp eval</title>\n<style>\n\
         body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\n\
         table{border-collapse:collapse;margin-bottom:1.5em}\n\
         td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}\n\
         th{background:#f3f3f3}\n\
         td.num{text-align:right;font-variant-numeric:tabular-nums}\n\
         figure{margin:0}\n\
         figure img{width:256px;height:auto;display:block;image-rendering:auto}\n\
         figcaption{font-size:12px;margin-top:4px}\n\
         .missing{width:256px;height:64px;background:#fee;color:#900;display:flex;align-items:center;justify-content:center}\n\
         </style></head><body>\n<h1>Editing results</h1>\n",
    );
    let _ = writeln!(
        h,
        "<p>{} edits, {} method(s). Means per editing type, in the papers' scalings (nan and missing values left out).</p>",
        rows.len(),
        methods.len()
    );
    for (m, method) in methods.iter().enumerate() {
        let _ = writeln!(
            h,
            "<h2>{}</h2>\n<table class=\"summary\"><tr><th>type</th>",
            esc(&method.name)
        );
        for metric in metrics {
            let arrow = if metric.higher_better { "↑" } else { "↓" };
            let _ = write!(h, "<th>{} {arrow}</th>", esc(&Summary::heading(metric)));
        }
        h.push_str("</tr>\n");
        for (g, group) in summary.groups.iter().enumerate() {
            let _ = write!(h, "<tr><td>{}</td>", esc(group));
            for k in 0..metrics.len() {
                let (v, _) = summary.means[m][k][g];
                let _ = write!(h, "<td class=\"num\">{v:.4}</td>");
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
    }
    h.push_str("<h2>Edits</h2>\n<table class=\"edits\"><tr><th>edit</th><th>source</th>");
    for method in methods {
        let _ = write!(h, "<th>{}</th>", esc(&method.name));
    }
    h.push_str("</tr>\n");
    for row in rows {
        let it = row.item;
        let _ = write!(
            h,
            "<tr><td><b>{}</b>{}<br>{}<br>→ {}</td>",
            esc(&row.file_id),
            it.editing_type
                .as_ref()
                .map_or(String::new(), |t| format!(" (type {})", esc(t))),
            esc(it.source_prompt.as_deref().unwrap_or("")),
            esc(&it.targets[row.target]),
        );
        let _ = write!(h, "<td>{}</td>", figure(&it.image, base, ""));
        for scored in &row.results {
            let mut caption = String::new();
            for (metric, v) in metrics.iter().zip(&scored.values) {
                let text = match v {
                    Ok(Some(x)) => format!("{:.4}", x * metric.scale),
                    Ok(None) => "nan".into(),
                    Err(_) => "–".into(),
                };
                let _ = write!(caption, "{} {text}<br>", esc(&Summary::heading(metric)));
            }
            let cell = match &scored.path {
                Some(p) => figure(p, base, &caption),
                None => "<div class=\"missing\">no result</div>".into(),
            };
            let _ = write!(h, "<td>{cell}</td>");
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n</body></html>\n");
    h
}

fn figure(img: &Path, base: &Path, caption: &str) -> String {
    format!(
        "<figure><img src=\"{}\" alt=\"{}\" loading=\"lazy\"><figcaption>{caption}</figcaption></figure>",
        url(&relative(img, base)),
        esc(&img.display().to_string()),
    )
}

/// `target` as seen from the folder `base` (both made absolute), so that the
/// page and its images can move together.
fn relative(target: &Path, base: &Path) -> PathBuf {
    let abs = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let (t, b) = (abs(target), abs(base));
    let (tc, bc): (Vec<Component>, Vec<Component>) =
        (t.components().collect(), b.components().collect());
    let common = tc.iter().zip(&bc).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return t;
    }
    let mut out = PathBuf::new();
    for _ in common..bc.len() {
        out.push("..");
    }
    for c in &tc[common..] {
        out.push(c);
    }
    out
}

/// A path as a URL path: '/'-separated, every byte outside the unreserved
/// set percent-encoded.
fn url(p: &Path) -> String {
    let text = p.to_string_lossy().replace('\\', "/");
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_relative_urls() {
        let r = relative(Path::new("/a/b/c d/x#1.png"), Path::new("/a/e"));
        assert_eq!(r, Path::new("../b/c d/x#1.png"));
        assert_eq!(url(&r), "../b/c%20d/x%231.png");
        assert_eq!(esc("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
