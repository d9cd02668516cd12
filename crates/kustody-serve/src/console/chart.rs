//! Charts drawn on the server as inline SVG: no chart library, no script, nothing the
//! Content-Security-Policy has to allow (colours are presentation attributes, not styles).

use std::collections::BTreeMap;
use std::fmt::Write;

use super::html::esc;

/// Colours of the series, in order (the last one is "other").
const PALETTE: &[&str] =
    &["#6cb6ff", "#ffb347", "#3fb950", "#ff5f56", "#d2a8ff", "#56d4dd", "#e3b341", "#f778ba", "#8b96a3"];

/// The colour of a priority.
pub fn priority_colour(p: &str) -> &'static str {
    match p.to_ascii_lowercase().as_str() {
        "emergency" | "alert" | "critical" => "#ff5f56",
        "error" => "#f0883e",
        "warning" => "#ffb347",
        "notice" => "#6cb6ff",
        _ => "#8b96a3",
    }
}

/// Buckets of `[since_ns, until_ns)`: the narrowest round width (1, 2, 5, 10, 15, 30 minutes,
/// 1, 2, 3, 6, 12 hours, then whole days) giving at most `max` bars.
pub fn bucket_ns(since_ns: i64, until_ns: i64, max: i64) -> i64 {
    const MIN: i64 = 60_000_000_000;
    let span = (until_ns - since_ns).max(MIN);
    let minutes = ((span / MIN + max - 1) / max.max(1)).max(1);
    let round = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440].into_iter().find(|&r| r >= minutes);
    round.unwrap_or_else(|| (minutes + 1439) / 1440 * 1440) * MIN
}

/// A series' counts: bucket start → n.
pub type Series = BTreeMap<i64, u64>;

/// Keeps the `top` largest series by total and folds the others into one named `other`.
pub fn top(mut series: Vec<(String, Series)>, top: usize) -> Vec<(String, Series)> {
    series.sort_by_key(|(k, s)| (std::cmp::Reverse(s.values().sum::<u64>()), k.clone()));
    if series.len() <= top {
        return series;
    }
    let rest = series.split_off(top);
    let mut other = Series::new();
    for (_, s) in rest {
        for (t, n) in s {
            *other.entry(t).or_default() += n;
        }
    }
    series.push(("other".into(), other));
    series
}

fn label_time(ns: i64, span_ns: i64) -> String {
    let s = kustody_model::time::format_rfc3339_secs(ns);
    // a day or less: the time of day is enough
    if span_ns <= 86_400_000_000_000 {
        s.get(11..16).unwrap_or(&s).to_owned()
    } else {
        s.get(5..16).unwrap_or(&s).replace('T', " ")
    }
}

/// Stacked bars over time, one colour per series, with a legend. `colour` picks a series'
/// colour by name (or the palette, in order, when it gives none). `id` names the SVG element.
pub fn stacked(
    id: &str,
    title: &str,
    series: &[(String, Series)],
    since_ns: i64,
    until_ns: i64,
    bucket_ns: i64,
    colour: Option<fn(&str) -> &'static str>,
) -> String {
    let (w, h, left, bottom, top_pad) = (960.0_f64, 180.0_f64, 48.0_f64, 22.0_f64, 8.0_f64);
    let buckets = ((until_ns - since_ns) as f64 / bucket_ns.max(1) as f64).ceil().max(1.0);
    let mut totals: BTreeMap<i64, u64> = BTreeMap::new();
    for (_, s) in series {
        for (t, n) in s {
            *totals.entry(*t).or_default() += n;
        }
    }
    let max = totals.values().copied().max().unwrap_or(0).max(1);
    let plot_w = w - left - 4.0;
    let plot_h = h - bottom - top_pad;
    let bar_w = (plot_w / buckets).max(0.5);
    let sum: u64 = totals.values().sum();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<figure class="chart"><figcaption>{} <span class="muted">({sum} in all, at most {max} per {})</span></figcaption><svg id="{}" viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        esc(title),
        per(bucket_ns),
        esc(id),
        esc(title)
    );
    // axes and labels
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#2a323c"/><text x="{2}" y="{3}" fill="#8b96a3" font-size="11" text-anchor="end">{max}</text><text x="{2}" y="{0}" fill="#8b96a3" font-size="11" text-anchor="end">0</text>"##,
        h - bottom,
        w - 4.0,
        left - 4.0,
        top_pad + 10.0
    );
    let span = until_ns - since_ns;
    for (i, anchor) in [(0_i32, "start"), (1, "middle"), (2, "end")] {
        let t = since_ns + span / 2 * i64::from(i);
        let x = left + plot_w / 2.0 * f64::from(i);
        let _ = write!(
            svg,
            r##"<text x="{x}" y="{}" fill="#8b96a3" font-size="11" text-anchor="{anchor}">{}</text>"##,
            h - 6.0,
            esc(&label_time(t, span))
        );
    }
    // bars, stacked in series order from the bottom
    let mut base: BTreeMap<i64, f64> = BTreeMap::new();
    for (i, (name, s)) in series.iter().enumerate() {
        let fill = colour.map(|c| c(name)).unwrap_or(PALETTE.get(i).copied().unwrap_or("#8b96a3"));
        for (t, n) in s {
            if *n == 0 {
                continue;
            }
            let x = left + ((t - since_ns) as f64 / bucket_ns.max(1) as f64).floor() * bar_w;
            if x < left || x >= left + plot_w {
                continue;
            }
            let bh = *n as f64 / max as f64 * plot_h;
            let b = base.entry(*t).or_insert(0.0);
            let y = h - bottom - *b - bh;
            *b += bh;
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.2}" height="{bh:.1}" fill="{fill}"><title>{} {}: {n}</title></rect>"#,
                (bar_w - 0.3).max(0.4),
                esc(&kustody_model::time::format_rfc3339_secs(*t)),
                esc(if name.is_empty() { "events" } else { name })
            );
        }
    }
    svg.push_str("</svg>");
    if series.len() > 1 || series.first().is_some_and(|(n, _)| !n.is_empty()) {
        svg.push_str(r#"<div class="legend">"#);
        for (i, (name, s)) in series.iter().enumerate() {
            let fill = colour.map(|c| c(name)).unwrap_or(PALETTE.get(i).copied().unwrap_or("#8b96a3"));
            let _ = write!(
                svg,
                r#"<span><svg width="10" height="10" xmlns="http://www.w3.org/2000/svg"><rect width="10" height="10" fill="{fill}"/></svg> {} <span class="muted">{}</span></span>"#,
                esc(if name.is_empty() { "(none)" } else { name }),
                s.values().sum::<u64>()
            );
        }
        svg.push_str("</div>");
    }
    svg.push_str("</figure>");
    svg
}

/// "minute", "5 minutes", "hour"… for a bucket width.
fn per(bucket_ns: i64) -> String {
    let m = bucket_ns / 60_000_000_000;
    match m {
        1 => "minute".into(),
        60 => "hour".into(),
        1440 => "day".into(),
        m if m % 1440 == 0 => format!("{} days", m / 1440),
        m if m % 60 == 0 => format!("{} hours", m / 60),
        m => format!("{m} minutes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000_000;

    #[test]
    fn buckets_are_whole_minutes_and_bounded() {
        assert_eq!(bucket_ns(0, 24 * 60 * MIN, 1440), MIN);
        assert_eq!(bucket_ns(0, 7 * 24 * 60 * MIN, 1440), 10 * MIN);
        assert_eq!(bucket_ns(0, 3650 * 24 * 60 * MIN, 288), 13 * 1440 * MIN);
        assert_eq!(per(bucket_ns(0, 3650 * 24 * 60 * MIN, 288)), "13 days");
        assert_eq!(bucket_ns(0, 10, 1440), MIN);
    }

    #[test]
    fn the_largest_series_are_kept_and_the_rest_folded() {
        let s = |n: u64| Series::from([(0, n)]);
        let got = top(vec![("a".into(), s(1)), ("b".into(), s(5)), ("c".into(), s(3)), ("d".into(), s(2))], 2);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b", "c", "other"]);
        assert_eq!(got[2].1[&0], 3);
    }

    #[test]
    fn bars_are_drawn_to_scale_and_names_escaped() {
        let series = vec![("<ns>".to_owned(), Series::from([(0, 2), (MIN, 4)]))];
        let svg = stacked("c", "Events", &series, 0, 2 * MIN, MIN, None);
        assert_eq!(svg.matches("<rect x=").count(), 2);
        assert!(svg.contains("&lt;ns&gt;") && !svg.contains("<ns>"));
        assert!(svg.contains("(6 in all, at most 4 per minute)"));
        // the tallest bar fills the plot's height
        assert!(svg.contains(r#"height="150.0""#), "{svg}");
    }
}
