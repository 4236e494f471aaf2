//! What `pnp eval` writes of its rows: the CSV with PIE-Bench's columns,
//! and the means per editing type in the papers' scalings.

use super::{Method, Row};
use pnp::metrics::Metric;
use std::collections::BTreeMap;

/// The CSV: `file_id`, then `method|metric` for every method and metric,
/// "nan" where a region is empty, empty where nothing was computed.
pub fn csv(methods: &[Method], metrics: &[Metric], rows: &[Row]) -> String {
    let mut out = String::from("file_id");
    for method in methods {
        for metric in metrics {
            out.push_str(&format!(
                ",{}",
                csv_field(&format!("{}|{}", method.name, metric.name))
            ));
        }
    }
    out.push('\n');
    for row in rows {
        out.push_str(&csv_field(&row.file_id));
        for scored in &row.results {
            for v in &scored.values {
                out.push(',');
                match v {
                    Ok(Some(x)) => out.push_str(&format!("{x}")),
                    Ok(None) => out.push_str("nan"),
                    Err(_) => {}
                }
            }
        }
        out.push('\n');
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Means per method, metric and editing type ("all" last), over the values
/// computed (nan and missing left out; an infinite PSNR, of identical
/// images, makes its mean infinite), in the papers' scalings.
pub struct Summary {
    /// Editing types in order, then "all".
    pub groups: Vec<String>,
    /// [method][metric][group] -> (mean x scale, count).
    pub means: Vec<Vec<Vec<(f64, usize)>>>,
}

impl Summary {
    pub fn of(methods: &[Method], metrics: &[Metric], rows: &[Row]) -> Summary {
        let mut groups: Vec<String> = rows
            .iter()
            .filter_map(|r| r.item.editing_type.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        groups.push("all".into());
        let mut means = vec![vec![vec![(0.0, 0usize); groups.len()]; metrics.len()]; methods.len()];
        let all = groups.len() - 1;
        let index: BTreeMap<&str, usize> = (groups.iter().enumerate())
            .map(|(i, g)| (g.as_str(), i))
            .collect();
        for row in rows {
            let g = (row.item.editing_type.as_deref()).and_then(|t| index.get(t).copied());
            for (m, scored) in row.results.iter().enumerate() {
                for (k, v) in scored.values.iter().enumerate() {
                    if let Ok(Some(x)) = v
                        && !x.is_nan()
                    {
                        for gi in g.into_iter().chain([all]) {
                            let cell = &mut means[m][k][gi];
                            cell.0 += x;
                            cell.1 += 1;
                        }
                    }
                }
            }
        }
        for per_metric in means.iter_mut() {
            for (k, per_group) in per_metric.iter_mut().enumerate() {
                for cell in per_group.iter_mut() {
                    if cell.1 > 0 {
                        cell.0 = cell.0 / cell.1 as f64 * metrics[k].scale;
                    } else {
                        cell.0 = f64::NAN;
                    }
                }
            }
        }
        Summary { groups, means }
    }

    /// The metric's column heading with its scaling: "mse_unedit_part x10^4".
    pub fn heading(metric: &Metric) -> String {
        match metric.scale.log10().round() as i32 {
            0 => metric.name.to_string(),
            e => format!("{} x10^{e}", metric.name),
        }
    }

    pub fn text(&self, methods: &[Method], metrics: &[Metric]) -> String {
        let mut out = String::new();
        for (m, method) in methods.iter().enumerate() {
            out.push_str(&format!("{}: means per editing type\n", method.name));
            out.push_str(&format!("  {:<8}", "type"));
            for metric in metrics {
                out.push_str(&format!(" {:>24}", Self::heading(metric)));
            }
            out.push_str(&format!(" {:>6}\n", "edits"));
            for (g, group) in self.groups.iter().enumerate() {
                out.push_str(&format!("  {group:<8}"));
                let mut n = 0;
                for k in 0..metrics.len() {
                    let (v, c) = self.means[m][k][g];
                    n = n.max(c);
                    out.push_str(&format!(" {v:>24.4}"));
                }
                out.push_str(&format!(" {n:>6}\n"));
            }
        }
        out
    }
}
