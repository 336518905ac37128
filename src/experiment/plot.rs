//! The report's plot: cumulative conversion rate per arm over time with
//! its 95 % band, as a self-contained SVG (no fonts or scripts needed).

use std::fmt::Write as _;

use super::report::Report;

const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// (line, band) colours of control and treatment.
const COLOURS: [(&str, &str); 2] = [("#1f5fa8", "#9dbde3"), ("#c8501e", "#f0b89c")];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn hhmm(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    // 2026-01-02T03:04:05Z -> 01-02 03:04
    s.get(5..16).map_or(s.clone(), |x| x.replace('T', " "))
}

/// The SVG of a report's timeline.
pub fn svg(r: &Report) -> String {
    let pts = &r.timeline;
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(out, r##"<rect width="{W}" height="{H}" fill="white"/>"##
    );
    let _ = write!(
        out,
        r##"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}: cumulative {} per arm (95 % CI)</text>"##,
        esc(&r.experiment),
        esc(&r.metric)
    );
    let _ = write!(
        out,
        r##"<text x="{LEFT}" y="40" fill="#444">{}</text>"##,
        esc(&r.decision)
    );
    let (Some(first), Some(last)) = (pts.first(), pts.last()) else {
        out.push_str("</svg>\n");
        return out;
    };
    let (t0, t1) = (
        first.time_ms as f64,
        (last.time_ms as f64).max(first.time_ms as f64 + 1.0),
    );
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for p in pts {
        for v in [p.control, p.treatment].into_iter().flatten() {
            lo = lo.min(v[1]);
            hi = hi.max(v[2]);
        }
    }
    if !lo.is_finite() || !hi.is_finite() {
        lo = 0.0;
        hi = 1.0;
    }
    let pad = ((hi - lo) * 0.08).max(0.005);
    let (lo, hi) = ((lo - pad).max(0.0), (hi + pad).min(1.0));
    let x = |t: f64| LEFT + (t - t0) / (t1 - t0) * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (hi - v) / (hi - lo).max(1e-9) * (H - TOP - BOTTOM);
    // Axes and grid.
    for k in 0..=5 {
        let v = lo + (hi - lo) * k as f64 / 5.0;
        let yy = y(v);
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.1} %</text>",
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            100.0 * v
        );
    }
    for k in 0..=4 {
        let t = t0 + (t1 - t0) * k as f64 / 4.0;
        let anchor = match k {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"##,
            x(t),
            H - BOTTOM + 18.0,
            hhmm(t as i64)
        );
    }
    let _ = write!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{:.1}\" stroke=\"#333\"/>",
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM
    );
    let _ = write!(
        out,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#444">time (UTC), answers whose 1 h window has closed</text>"##,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 18.0
    );
    for (i, arm) in r.arms.iter().enumerate() {
        let series: Vec<(f64, [f64; 3])> = pts
            .iter()
            .filter_map(|p| {
                let v = if i == 0 { p.control } else { p.treatment };
                v.map(|v| (p.time_ms as f64, v))
            })
            .collect();
        if series.is_empty() {
            continue;
        }
        let (line, band) = COLOURS[i.min(1)];
        let mut poly = String::new();
        for (t, v) in &series {
            let _ = write!(poly, "{:.1},{:.1} ", x(*t), y(v[2]));
        }
        for (t, v) in series.iter().rev() {
            let _ = write!(poly, "{:.1},{:.1} ", x(*t), y(v[1]));
        }
        let _ = write!(
            out,
            r##"<polygon class="band" points="{}" fill="{band}" fill-opacity="0.45" stroke="none"/>"##,
            poly.trim_end()
        );
        let path: Vec<String> = series
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(v[0])))
            .collect();
        let _ = write!(
            out,
            r##"<polyline class="rate" points="{}" fill="none" stroke="{line}" stroke-width="2.5"/>"##,
            path.join(" ")
        );
        let ly = TOP + 14.0 + 18.0 * i as f64;
        let _ = write!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="420" height="18" fill="white" fill-opacity="0.8"/>"##,
            LEFT + 6.0,
            ly - 13.0
        );
        let _ = write!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="14" height="4" fill="{line}"/><text x="{:.1}" y="{:.1}">{} {}: {:.2} % [{:.2}, {:.2}] · {} users</text>"##,
            LEFT + 12.0,
            ly - 4.0,
            LEFT + 32.0,
            ly,
            arm.arm,
            esc(&arm.model),
            100.0 * arm.rate,
            100.0 * arm.ci[0],
            100.0 * arm.ci[1],
            arm.users
        );
    }
    out.push_str("</svg>\n");
    out
}
