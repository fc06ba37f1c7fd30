//! The report of an attack run: JSON for scripts, a table for people, and a chart
//! (SVG) with cluster-wide counting next to per-host counting.

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::attack::{ActorReport, Bucket, Limits, ModeReport};
use crate::scenario::{Role, Scenario};

/// One table cell, computed from one actor's report.
type Cell = fn(&ActorReport) -> String;
/// One chart line, read from each timeline bucket.
type Series = fn(&Bucket) -> u64;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub limits: Limits,
    pub cluster_wide: ModeReport,
    pub per_host: ModeReport,
}

impl Report {
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let f = std::fs::File::create(path)?;
        serde_json::to_writer_pretty(f, self).map_err(std::io::Error::other)
    }

    /// The side-by-side table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "scenario {:?}: {} MX nodes; limits: {} connections per network per {} s, ban past {} bad recipients per network\n\n",
            self.scenario.name,
            self.scenario.nodes,
            self.limits.network_rate,
            self.limits.window.as_secs_f64(),
            self.limits.network_block_after
        );
        out.push_str(&format!(
            "  {:<20} {:>27}   {:>27}\n",
            "", "cluster-wide", "per-host"
        ));
        let rows: [(&str, Cell); 6] = [
            ("connections admitted", |a| {
                format!("{}/{}", a.admitted, a.attempts)
            }),
            ("max in any window", |a| {
                format!("{} (limit {})", a.max_admitted_in_window, a.window_limit)
            }),
            ("bad RCPTs passed", |a| {
                if a.bad_rcpts_sent > 0 {
                    format!("{}/{}", a.bad_rcpts_passed, a.bad_rcpts_sent)
                } else {
                    "-".into()
                }
            }),
            ("time to ban", |a| {
                a.time_to_ban_ms
                    .map_or("never".into(), |t| format!("{:.2} s", t as f64 / 1000.0))
            }),
            ("false refusals", |a| {
                if a.role == Role::Legitimate {
                    a.false_refusals.to_string()
                } else {
                    "-".into()
                }
            }),
            ("errors", |a| a.errors.to_string()),
        ];
        for (i, actor) in self.scenario.actors.iter().enumerate() {
            out.push_str(&format!(
                "{} ({}, {})\n",
                actor.name,
                match actor.role {
                    Role::Attacker => "attacker",
                    Role::Legitimate => "legitimate",
                },
                actor.network
            ));
            let (c, p) = (&self.cluster_wide.actors[i], &self.per_host.actors[i]);
            for (label, f) in rows {
                out.push_str(&format!("  {:<20} {:>27}   {:>27}\n", label, f(c), f(p)));
            }
        }
        out
    }

    /// Two panels, cluster-wide above per-host: connections per time bucket, admitted and
    /// refused, attackers and legitimate senders; the first ban as a vertical line.
    pub fn write_svg(&self, path: &Path) -> Result<(), String> {
        let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let panels = root.split_evenly((2, 1));
        let ymax = [&self.cluster_wide, &self.per_host]
            .iter()
            .flat_map(|m| m.timeline.iter())
            .map(|b| {
                b.attacker_admitted
                    .max(b.attacker_refused)
                    .max(b.legit_admitted)
                    .max(b.legit_refused)
            })
            .max()
            .unwrap_or(1)
            .max(1);
        let xmax = self.cluster_wide.timeline.len() as u64 * self.cluster_wide.bucket_ms;
        for (panel, mode) in panels.iter().zip([&self.cluster_wide, &self.per_host]) {
            let title = format!(
                "{} counting: connections per {} ms",
                mode.mode, mode.bucket_ms
            );
            let mut chart = ChartBuilder::on(panel)
                .caption(title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(32)
                .y_label_area_size(48)
                .build_cartesian_2d(0u64..xmax.max(1), 0u64..ymax + ymax / 10 + 1)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("ms since start")
                .y_desc("connections")
                .draw()
                .map_err(|e| e.to_string())?;
            let series: [(&str, RGBColor, Series); 4] = [
                ("attacker admitted", RED, |b| b.attacker_admitted),
                ("attacker refused", RGBColor(140, 140, 140), |b| {
                    b.attacker_refused
                }),
                ("legitimate admitted", RGBColor(0, 140, 0), |b| {
                    b.legit_admitted
                }),
                ("legitimate refused", RGBColor(230, 140, 0), |b| {
                    b.legit_refused
                }),
            ];
            for (name, color, f) in series {
                chart
                    .draw_series(LineSeries::new(
                        mode.timeline.iter().map(|b| (b.t_ms, f(b))),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| e.to_string())?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
            }
            if let Some(ban) = mode.first_ban_ms {
                chart
                    .draw_series(LineSeries::new(
                        vec![(ban, 0), (ban, ymax)],
                        BLUE.stroke_width(1),
                    ))
                    .map_err(|e| e.to_string())?
                    .label(format!("first ban ({ban} ms)"))
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())
    }
}
