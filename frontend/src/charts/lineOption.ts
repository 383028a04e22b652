import type { MetricPoint } from "../api/types";
import type { ChartOption } from "./echarts";

export interface ChartLine {
  label: string;
  points: readonly MetricPoint[];
}

export interface ChartScale {
  /** Axis name, e.g. "accuracy". */
  y: string;
  /** Fixed bounds (accuracies live in [0, 1]); omitted: fitted to the data. */
  min?: number;
  max?: number;
  /** A dashed horizontal line, e.g. the discriminator's "aligned" 0.5. */
  reference?: { value: number; label: string };
}

// ECharts wraps a long legend onto more rows but does not move the plot down for them; this estimates the
// rows (for a chart about this wide) so the legend never covers the lines. A scrolling legend would hide
// entries instead, and every entry matters here.
const LEGEND_WIDTH_PX = 400;
const ROW_PX = 22;

function legendHeight(labels: readonly string[]): number {
  const px = labels.reduce((sum, label) => sum + 36 + 6.5 * label.length, 0);
  return ROW_PX * Math.max(1, Math.ceil(px / LEGEND_WIDTH_PX));
}

/** An ECharts option drawing one line per round-indexed series. */
export function lineOption(lines: readonly ChartLine[], scale: ChartScale): ChartOption {
  const series: NonNullable<ChartOption["series"]> = lines.map((line) => ({
    type: "line",
    name: line.label,
    data: line.points.map((p) => [p.round, p.value]),
    showSymbol: line.points.length < 40,
    animation: false,
  }));
  if (scale.reference) {
    series.push({
      type: "line",
      name: scale.reference.label,
      data: [],
      lineStyle: { type: "dashed" },
      markLine: {
        silent: true,
        symbol: "none",
        lineStyle: { type: "dashed", color: "#888" },
        label: { formatter: scale.reference.label, position: "insideEndTop" },
        data: [{ yAxis: scale.reference.value }],
      },
    });
  }
  return {
    backgroundColor: "transparent",
    aria: { enabled: true },
    grid: {
      left: 48,
      right: 16,
      top: legendHeight(series.map((s) => String(s.name ?? ""))) + 12,
      bottom: 32,
    },
    legend: { top: 0 },
    tooltip: { trigger: "axis", valueFormatter: (v) => (typeof v === "number" ? v.toFixed(4) : String(v)) },
    xAxis: { type: "value", name: "round", nameLocation: "middle", nameGap: 22, minInterval: 1 },
    yAxis: { type: "value", name: scale.y, min: scale.min, max: scale.max, scale: scale.min === undefined },
    series,
  };
}
