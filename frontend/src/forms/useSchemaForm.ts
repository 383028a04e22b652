import { useMemo, useState } from "react";
import { type FieldGroup, type FieldValue, initialValues, validateForm } from "./schemaForm";

/** Values of a schema-driven form and their problems, recomputed as the user types. A field shows its
 * problem once it has been changed (an untouched empty field is not an error yet); `problems` has all. */
export function useSchemaForm(groups: readonly FieldGroup[]) {
  const [values, setValues] = useState(() => initialValues(groups));
  const [touched, setTouched] = useState<ReadonlySet<string>>(new Set());
  const problems = useMemo(() => validateForm(groups, values), [groups, values]);
  const shown = useMemo(
    () => Object.fromEntries(Object.entries(problems).filter(([key]) => touched.has(key))),
    [problems, touched],
  );
  const setValue = (key: string, value: FieldValue) => {
    setValues((current) => ({ ...current, [key]: value }));
    setTouched((current) => (current.has(key) ? current : new Set(current).add(key)));
  };
  const reset = () => {
    setValues(initialValues(groups));
    setTouched(new Set());
  };
  return { values, problems, shown, setValue, reset, valid: Object.keys(problems).length === 0 };
}
