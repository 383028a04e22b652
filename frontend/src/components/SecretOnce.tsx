import { CopyButton } from "./CopyButton";

/** A credential the server shows once (a join or node token): readable, copyable, never stored. */
export function SecretOnce({ label, value, testId }: { label: string; value: string; testId: string }) {
  return (
    <div className="secret">
      <span className="secret-label">{label}</span>
      <code data-testid={testId} className="secret-value">
        {value}
      </code>
      <CopyButton text={value} label={`Copy ${label.toLowerCase()}`} />
    </div>
  );
}
