// The full flow with the client @hey-api/openapi-ts generated from a running server's spec (no
// config, no edits), compiled by TypeScript 5 and run by node:
//
//     node flow.js BASE_URL FLOW_DATA_JSON EXAMPLES_DIR
//
// The generated code sits in ./client beside this file. Prints what the client got back, as JSON.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";

import { client } from "./client/client.gen";
import {
  createDataset,
  createModel,
  fit,
  getModel,
  getModelCenters,
  getModelLabels,
  getModelPlot,
  predict,
  predictWithModel,
  upload,
} from "./client/sdk.gen";
import type { Model, ModelParams } from "./client/types.gen";

// Every call throws the problem document of an error answer (and its data is then typed as present).
const T = { throwOnError: true } as const;

type FlowData = {
  columns: string[];
  points: number[][];
  predict: number[][];
  fits: Record<string, Partial<ModelParams>>;
  n_clusters: number;
  classic_n_clusters: number;
};

async function main(url: string, dataPath: string, examples: string): Promise<object> {
  const data: FlowData = JSON.parse(readFileSync(dataPath, "utf8"));
  // The generator leaves the spec's server variable ({origin}) to the caller.
  client.setConfig({ baseUrl: `${url}/kmeans` });

  const dataset = (await createDataset({ ...T, body: { data: data.points, columns: data.columns, name: "blobs" } })).data;
  const fits: Record<string, object> = {};
  for (const [name, options] of Object.entries(data.fits)) {
    const params: ModelParams = { n_clusters: data.n_clusters, random_state: 0, ...options };
    let model: Model = (await createModel({ ...T, body: { dataset_id: dataset.id, params } })).data;
    const deadline = Date.now() + 60_000;
    while ((model.status === "queued" || model.status === "running") && Date.now() < deadline) {
      await new Promise((done) => setTimeout(done, 100));
      model = (await getModel({ ...T, path: { model_id: model.id } })).data;
    }
    const path = { model_id: model.id };
    const plot: Blob = (await getModelPlot({ ...T, path })).data;
    fits[name] = {
      id: model.id,
      status: model.status,
      method: model.params.method,
      labels: (await getModelLabels({ ...T, path })).data.labels,
      centers: (await getModelCenters({ ...T, path })).data.centers,
      predicted: (await predictWithModel({ ...T, path, body: { data: data.predict } })).data.labels,
      plot_sha256: createHash("sha256").update(Buffer.from(await plot.arrayBuffer())).digest("hex"),
    };
  }

  const csv = (file: string) => new Blob([readFileSync(join(examples, file))], { type: "text/csv" });
  const job = (await upload({ ...T, body: { file: csv("model.csv") } })).data;
  // The generator types these answers as the JSON alternative, so ask for it (the default is the classic CSV).
  const json = { Accept: "application/json" };
  const labels = (await fit({ ...T, body: { job_id: job.job_id, model_params: { n_clusters: data.classic_n_clusters } },
                              headers: json })).data.labels;
  const predicted = (await predict({ ...T, body: { job_id: job.job_id, file: csv("predict.csv") }, headers: json })).data.labels;
  return { dataset: { id: dataset.id, rows: dataset.rows, columns: dataset.columns }, fits,
           classic: { job_id: job.job_id, labels, predicted } };
}

main(process.argv[2], process.argv[3], process.argv[4]).then(
  (seen) => console.log(JSON.stringify(seen)),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
