/** How numbers and times read on the dashboard. */

export function formatAccuracy(value: number | null | undefined): string {
  return value == null ? "—" : `${(value * 100).toFixed(1)}%`;
}

export function formatMetric(value: number | null | undefined): string {
  if (value == null) return "—";
  return Math.abs(value) >= 100 ? value.toFixed(0) : value.toFixed(4);
}

export function formatTime(iso: string | null | undefined): string {
  if (!iso) return "never";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}
