/** Short names for the generated API schemas the dashboard reads. */
import type { components } from "./schema";

type Schemas = components["schemas"];

export type Federation = Schemas["FederationOut"];
export type FederationCreated = Schemas["FederationCreated"];
export type FederationCloned = Schemas["FederationCloned"];
export type FederationClone = Schemas["FederationClone"];
export type FederationStatus = Federation["status"];
export type FederationSettings = Schemas["FederationSettings"];
export type Node = Schemas["NodeOut"];
export type NodeCreate = Schemas["NodeCreate"];
export type NodeCreated = Schemas["NodeCreated"];
export type RoundSummary = Schemas["RoundSummary"];
export type RoundDetail = Schemas["RoundOut"];
export type MetricSeriesList = Schemas["MetricSeriesList"];
export type MetricSeries = Schemas["MetricSeries"];
export type MetricPoint = Schemas["MetricPoint"];
export type SessionOut = Schemas["SessionOut"];
/** What a role may do (backend/access.py's table); the session lists its own. */
export type Operation = Schemas["Operation"];
export type JoinToken = Schemas["JoinToken"];
export type EventType = Schemas["EventType"];
export type Checkpoint = Schemas["CheckpointOut"];
