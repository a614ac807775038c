//! A grouped bar chart as PNG, drawn with plotters' bitmap backend.
//!
//! plotters is built without its `ttf` feature (which needs fontconfig and
//! FreeType); text goes through `ab_glyph`, which needs a font file at run
//! time. [`load_font`] registers the first TrueType font found (or
//! `$VXMESH_BENCH_FONT`); without one, the chart is drawn without any text
//! and the caller writes a legend file next to it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::anyhow;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

/// Fonts tried, in order, after `$VXMESH_BENCH_FONT`.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// The font family name text is drawn with.
const FAMILY: &str = "sans-serif";

/// Bar colours, one per series.
const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

/// Names of the bar colours, in [`COLORS`] order, for a text legend.
pub const COLOR_NAMES: [&str; 4] = ["blue", "orange", "green", "red"];

/// One panel: groups of bars (one group per path), one bar per series.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Title drawn above the panel (with the unit).
    pub title: String,
    /// Names of the series (one colour each).
    pub series: Vec<String>,
    /// Group label and one value per series (`None`: not measured).
    pub groups: Vec<(String, Vec<Option<f64>>)>,
}

/// Registers a TrueType font for text, once per process. Returns its path,
/// or `None` when no usable font was found (draw without text then).
pub fn load_font() -> Option<PathBuf> {
    static FONT: OnceLock<Option<PathBuf>> = OnceLock::new();
    FONT.get_or_init(|| {
        let env = std::env::var_os("VXMESH_BENCH_FONT").map(PathBuf::from);
        env.into_iter()
            .chain(FONT_CANDIDATES.iter().map(PathBuf::from))
            .find(|p| {
                let Ok(bytes) = std::fs::read(p) else {
                    return false;
                };
                // The registry wants 'static bytes; one font per process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                register_font(FAMILY, FontStyle::Normal, bytes).is_ok()
            })
    })
    .clone()
}

fn perr(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

/// A step of 1, 2 or 5 × 10^n giving at most about 6 grid lines up to `max`.
pub fn nice_step(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| max / s <= 6.0)
        .unwrap_or(10.0 * mag)
}

/// A value with about three significant digits.
pub fn short(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// An axis label: as many decimals as the grid step needs.
pub fn tick(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

/// Draws the panels side by side into a PNG at `path`, `width` × `height`
/// pixels; text only when `text` (a font was loaded with [`load_font`]).
pub fn draw(path: &Path, panels: &[Panel], size: (u32, u32), text: bool) -> anyhow::Result<()> {
    draw_grid(path, panels, panels.len().max(1), size, text)
}

/// Like [`draw`], the panels in rows of `cols`, left to right then top to
/// bottom.
pub fn draw_grid(
    path: &Path,
    panels: &[Panel],
    cols: usize,
    size: (u32, u32),
    text: bool,
) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(perr)?;
    if panels.is_empty() {
        return root.present().map_err(perr);
    }
    let cols = cols.clamp(1, panels.len());
    let areas = root.split_evenly((panels.len().div_ceil(cols), cols));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel, text)?;
    }
    root.present().map_err(perr)
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    panel: &Panel,
    text: bool,
) -> anyhow::Result<()> {
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    let (x0, x1, y0, y1) = (70, w - 20, 70, h - 45);
    let style = |size: u32, hpos, vpos| {
        TextStyle::from((FAMILY, size).into_font())
            .color(&BLACK)
            .pos(Pos::new(hpos, vpos))
    };
    let label = |s: &str, at: (i32, i32), size: u32, hpos, vpos| -> anyhow::Result<()> {
        if text {
            area.draw(&Text::new(s.to_string(), at, style(size, hpos, vpos)))
                .map_err(perr)?;
        }
        Ok(())
    };
    label(&panel.title, (w / 2, 8), 20, HPos::Center, VPos::Top)?;
    // Legend: a square and a name per series, on one line.
    let mut lx = x0;
    for (i, name) in panel.series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        area.draw(&Rectangle::new([(lx, 40), (lx + 12, 52)], c.filled()))
            .map_err(perr)?;
        label(name, (lx + 17, 46), 14, HPos::Left, VPos::Center)?;
        lx += 30 + 8 * name.len() as i32;
    }
    let max = panel
        .groups
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold(0.0f64, |m, &v| m.max(v));
    let step = nice_step(max * 1.1);
    let top = (max * 1.1 / step).ceil().max(1.0) * step;
    let y_of = |v: f64| y1 - ((v / top) * f64::from(y1 - y0)).round() as i32;
    let grid = RGBColor(220, 220, 220);
    let mut k = 0.0;
    while k <= top + step / 2.0 {
        let y = y_of(k);
        area.draw(&PathElement::new(vec![(x0, y), (x1, y)], grid))
            .map_err(perr)?;
        label(&tick(k, step), (x0 - 6, y), 13, HPos::Right, VPos::Center)?;
        k += step;
    }
    area.draw(&PathElement::new(vec![(x0, y0), (x0, y1), (x1, y1)], BLACK))
        .map_err(perr)?;
    let n = panel.groups.len().max(1) as i32;
    let gw = (x1 - x0) / n;
    let ns = panel.series.len().max(1) as i32;
    let bw = (gw * 8 / 10) / ns;
    for (g, (name, values)) in panel.groups.iter().enumerate() {
        let gx = x0 + g as i32 * gw;
        for (s, v) in values.iter().enumerate() {
            let bx = gx + gw / 10 + s as i32 * bw;
            let c = COLORS[s % COLORS.len()];
            match v {
                Some(v) => {
                    let y = y_of(*v).min(y1 - 1);
                    area.draw(&Rectangle::new([(bx, y), (bx + bw - 2, y1)], c.filled()))
                        .map_err(perr)?;
                    label(
                        &short(*v),
                        (bx + bw / 2, y - 3),
                        12,
                        HPos::Center,
                        VPos::Bottom,
                    )?;
                }
                None => label("n/a", (bx + bw / 2, y1 - 3), 12, HPos::Center, VPos::Bottom)?,
            }
        }
        label(name, (gx + gw / 2, y1 + 8), 14, HPos::Center, VPos::Top)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps() {
        assert_eq!(nice_step(10.0), 2.0);
        assert_eq!(nice_step(25.0), 5.0);
        assert_eq!(nice_step(190.0), 50.0);
        assert_eq!(nice_step(0.0), 1.0);
        assert!(25.0 / nice_step(25.0) <= 6.0);
    }

    #[test]
    fn ticks() {
        assert_eq!(tick(20.0, 5.0), "20");
        assert_eq!(tick(0.0, 50.0), "0");
        assert_eq!(tick(0.4, 0.2), "0.4");
        assert_eq!(tick(0.05, 0.05), "0.05");
    }

    #[test]
    fn short_values() {
        assert_eq!(short(17.345), "17.3");
        assert_eq!(short(0.823), "0.82");
        assert_eq!(short(126.4), "126");
    }

    #[test]
    fn draws_with_and_without_text() {
        let dir = std::env::temp_dir().join(format!("vxmesh-bench-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let panel = Panel {
            title: "TCP Gbit/s".into(),
            series: vec!["1 stream".into(), "2 streams".into()],
            groups: vec![
                ("underlay".into(), vec![Some(21.5), Some(20.0)]),
                ("vxmesh".into(), vec![Some(0.8), None]),
            ],
        };
        let plain = dir.join("plain.png");
        draw(&plain, std::slice::from_ref(&panel), (600, 400), false).unwrap();
        assert!(std::fs::metadata(&plain).unwrap().len() > 0);
        if load_font().is_some() {
            let with_text = dir.join("text.png");
            draw(&with_text, &[panel.clone(), panel], (900, 400), true).unwrap();
            assert!(std::fs::metadata(&with_text).unwrap().len() > 0);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
