import { type HTMLAttributes, useEffect, useRef } from "react";
import { type ChartOption, echarts } from "./echarts";

type Props = { option: ChartOption; label: string } & Omit<HTMLAttributes<HTMLDivElement>, "children">;

/** One ECharts instance bound to a div: created on mount, given each new option, resized with its box,
 * disposed on unmount. Extra props (data-testid, data-points, className) go to the div. */
export function EChart({ option, label, ...rest }: Props) {
  const box = useRef<HTMLDivElement>(null);
  const chart = useRef<echarts.ECharts | null>(null);

  useEffect(() => {
    const element = box.current!;
    // ECharts' built-in dark theme keeps axes and labels readable on the page's dark colours.
    const dark = window.matchMedia?.("(prefers-color-scheme: dark)").matches;
    const instance = echarts.init(element, dark ? "dark" : null, { renderer: "svg" });
    chart.current = instance;
    const observer =
      typeof ResizeObserver === "undefined" ? null : new ResizeObserver(() => instance.resize());
    observer?.observe(element);
    return () => {
      observer?.disconnect();
      instance.dispose();
      chart.current = null;
    };
  }, []);

  useEffect(() => {
    // replaceMerge drops series that left the option (a node removed) while keeping the chart's state.
    chart.current?.setOption(option, { replaceMerge: ["series"] });
  }, [option]);

  return <div ref={box} role="img" aria-label={label} {...rest} />;
}
