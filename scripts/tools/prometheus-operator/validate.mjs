// Validates prometheus-operator objects (ServiceMonitor, PrometheusRule, PodMonitor) against
// the schemas @kubernetes-models/prometheus-operator generates from the operator's Go API
// types (types, patterns such as durations, required fields).
//
// Usage: prometheus-operator-validate FILE.json...   each FILE holds one object or an array.
// Exit 0 when all pass, 1 when one fails, 2 on an unknown kind or unreadable input.
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";

const models = { ServiceMonitor, PrometheusRule, PodMonitor };
let status = 0;
for (const file of process.argv.slice(2)) {
  let objects;
  try {
    objects = JSON.parse(readFileSync(file, "utf8"));
  } catch (err) {
    console.error(`${file}: ${err.message}`);
    process.exit(2);
  }
  for (const object of Array.isArray(objects) ? objects : [objects]) {
    const name = `${object?.kind}/${object?.metadata?.name}`;
    const Model = object?.apiVersion === "monitoring.coreos.com/v1" ? models[object.kind] : undefined;
    if (!Model) {
      console.error(`${file}: ${object?.apiVersion} ${name}: not a kind this validator knows`);
      process.exit(2);
    }
    try {
      new Model(object).validate();
      console.log(`${file}: ${name} valid`);
    } catch (err) {
      console.error(`${file}: ${name} invalid: ${err.message}`);
      status = 1;
    }
  }
}
process.exit(status);
