import { describe, expect, it } from "vitest";
import { federationSettingsGroups } from "../src/components/CreateFederationForm";
import { allFields, initialValues, toBody, validateField, validateForm } from "../src/forms/schemaForm";

const field = (key: string) => allFields(federationSettingsGroups).find((f) => f.key === key)!;

describe("the create form's fields from the FederationSettings schema", () => {
  it("take the schema's defaults, nested ones included", () => {
    const values = initialValues(federationSettingsGroups);
    expect(values).toMatchObject({
      algorithm: "fedalign",
      rounds: "10",
      publish_model: true,
      min_sources: "",
      "hyperparameters.lr": "0.01",
      "hyperparameters.local_steps": "10",
      "hyperparameters.adv_loss": "flip",
      "model.input_shape": "3, 28, 28",
    });
    expect(field("algorithm").options).toEqual(["fedalign", "fedavg", "source_only"]);
    expect(field("hyperparameters.adv_weight").description).toMatch(/lambda/);
  });

  it("leave out what a form cannot edit: a free-form table, a list of numbers", () => {
    const keys = allFields(federationSettingsGroups).map((f) => f.key);
    expect(keys).not.toContain("model.options");
    expect(keys).not.toContain("hyperparameters.adam_betas");
    expect(keys).toContain("hyperparameters.optimizer");
    const body = toBody(federationSettingsGroups, initialValues(federationSettingsGroups));
    expect(body.model).not.toHaveProperty("options");
  });

  it("are all valid as they start", () => {
    expect(validateForm(federationSettingsGroups, initialValues(federationSettingsGroups))).toEqual({});
  });
});

describe("validation messages", () => {
  it("state the bounds and the offending value", () => {
    expect(validateField(field("hyperparameters.batch_size"), "5000")).toBe(
      "batch_size must be at least 1 and at most 4096; 5000 is out of range.",
    );
    expect(validateField(field("hyperparameters.momentum"), "1")).toBe(
      "momentum must be at least 0 and less than 1; 1 is out of range.",
    );
    expect(validateField(field("hyperparameters.lr"), "0")).toMatch(/greater than 0 and at most 10/);
    expect(validateField(field("phase_deadline_s"), "-5")).toBe(
      "Phase deadline (seconds) must be greater than 0 and at most 31622400; -5 is out of range.",
    );
  });

  it("say what kind of value is wanted", () => {
    expect(validateField(field("rounds"), "2.5")).toBe("Rounds must be a whole number.");
    expect(validateField(field("seed"), "abc")).toBe("Seed must be a number.");
    expect(validateField(field("rounds"), "")).toBe("Rounds is required.");
    expect(validateField(field("model.input_shape"), "3, x")).toMatch(/positive whole numbers/);
    expect(validateField(field("architecture"), "my_pkg.nets:build")).toBeNull();
    expect(validateField(field("architecture"), "my pkg")).toMatch(/an import path "package.module:factory"/);
  });

  it("accept an empty value where the schema allows null", () => {
    expect(validateField(field("min_sources"), "")).toBeNull();
    expect(validateField(field("min_sources"), "0")).toMatch(/at least 1/);
  });
});

describe("the request body", () => {
  it("is nested by the fields' paths, with typed values and null for empty optional ones", () => {
    const values = {
      ...initialValues(federationSettingsGroups),
      rounds: "25",
      "hyperparameters.adv_weight": "0.3",
    };
    const body = toBody(federationSettingsGroups, values) as Record<string, Record<string, unknown>>;
    expect(body.rounds).toBe(25);
    expect(body.min_sources).toBeNull();
    expect(body.publish_model).toBe(true);
    expect(body.model!.input_shape).toEqual([3, 28, 28]);
    expect(body.hyperparameters).toMatchObject({ adv_weight: 0.3, disc_steps: 10, conditional: false });
  });
});
