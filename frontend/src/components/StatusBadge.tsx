import type { FederationStatus } from "../api/types";

export function StatusBadge({ status }: { status: FederationStatus }) {
  return <span className={`badge status-${status}`}>{status}</span>;
}
