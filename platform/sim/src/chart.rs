//! Grouped bar charts as PNG, drawn with the timeline's canvas and font (`cargo xtask offload`'s
//! plot): one panel per measure, one bar per case, each bar labelled with its value.

use std::io;

use crate::timeline::{Canvas, Rgb, FONT_ADVANCE, FONT_LINE, TEXT};

/// One measure: its title, unit, and a value per case (in the chart's case order).
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    pub title: String,
    pub unit: String,
    pub values: Vec<f64>,
}

/// The bar colours, one per case, in turn.
const BARS: [Rgb; 5] = [[90, 90, 90], [30, 120, 200], [230, 140, 20], [60, 160, 70], [170, 60, 160]];
const PANEL_W: u32 = 300;
const PANEL_H: u32 = 220;
const MARGIN: u32 = 16;

/// Draws `panels` side by side over the same `cases`, under `title`; returns the PNG bytes.
/// The same input always gives the same bytes.
pub fn bar_chart_png(title: &str, cases: &[&str], panels: &[Panel]) -> io::Result<Vec<u8>> {
    let legend_h = FONT_LINE * (cases.len() as u32 + 1);
    let width = MARGIN + panels.len().max(1) as u32 * (PANEL_W + MARGIN);
    let height = MARGIN * 3 + FONT_LINE + PANEL_H + legend_h;
    let mut cv = Canvas::new(width, height);
    cv.text(MARGIN, MARGIN, title, TEXT);
    let top = MARGIN * 2 + FONT_LINE;
    for (k, panel) in panels.iter().enumerate() {
        let x0 = MARGIN + k as u32 * (PANEL_W + MARGIN);
        cv.text(x0, top, &format!("{} ({})", panel.title, panel.unit), TEXT);
        let plot_top = top + FONT_LINE * 2;
        let plot_h = PANEL_H - FONT_LINE * 4;
        let baseline = plot_top + plot_h;
        cv.fill(x0, baseline, PANEL_W, 1, TEXT);
        let max = panel.values.iter().cloned().fold(0.0f64, f64::max);
        let n = panel.values.len().max(1) as u32;
        let slot = PANEL_W / n;
        let bar_w = slot * 2 / 3;
        for (i, &v) in panel.values.iter().enumerate() {
            let h = if max > 0.0 { ((v / max) * f64::from(plot_h - FONT_LINE)).round() as u32 } else { 0 };
            let x = x0 + i as u32 * slot + (slot - bar_w) / 2;
            cv.fill(x, baseline - h, bar_w, h, BARS[i % BARS.len()]);
            let label = if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") };
            let label_w = label.len() as u32 * FONT_ADVANCE;
            cv.text(x + bar_w.saturating_sub(label_w) / 2, baseline - h - FONT_LINE, &label, TEXT);
        }
    }
    let legend_top = top + PANEL_H + MARGIN;
    for (i, case) in cases.iter().enumerate() {
        let y = legend_top + i as u32 * FONT_LINE;
        cv.fill(MARGIN, y + 1, 8, 8, BARS[i % BARS.len()]);
        cv.text(MARGIN + 12, y, case, TEXT);
    }
    cv.png()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_a_png_and_the_same_input_gives_the_same_bytes() {
        let panels = [
            Panel { title: "phone energy".into(), unit: "J".into(), values: vec![2.5, 1.0, 3.75] },
            Panel { title: "end to end".into(), unit: "s".into(), values: vec![1.0, 0.5, 0.0] },
        ];
        let a = bar_chart_png("offload", &["local", "WiFi", "3G"], &panels).unwrap();
        let b = bar_chart_png("offload", &["local", "WiFi", "3G"], &panels).unwrap();
        assert_eq!(&a[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(a, b);
        let decoder = png::Decoder::new(std::io::Cursor::new(&a));
        let reader = decoder.read_info().unwrap();
        assert_eq!(reader.info().width, 16 + 2 * (300 + 16));
    }
}
