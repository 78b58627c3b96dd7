// Flamenco job type "Rerender: Neural Render" (Flamenco 3.x custom job type).
//
// Why a job type of our own: Flamenco's stock "Simple Blender Render" already runs `blender -b file.blend
// --render-frame ...`, which works with the Neural Rerender engine unchanged; what it cannot do is tell each
// worker where its backend is. This job type adds that setting and passes it to Blender through the
// RERENDER_BACKEND environment variable's command-line equivalent (a --python-expr run before rendering),
// so one farm can use a shared backend or each worker its own GPU ("tcp://127.0.0.1:5555").
// Install: copy this file into the `scripts/` folder next to the Flamenco Manager executable and restart it.

const JOB_TYPE = {
  label: "Rerender: Neural Render",
  description: "Render frames with the Neural Rerender engine; every worker reaches a Rerender backend",
  settings: [
    { key: "frames", type: "string", required: true,
      eval: "f'{C.scene.frame_start}-{C.scene.frame_end}'",
      evalInfo: { showLinkButton: true, description: "Scene frame range" },
      description: "Frame range to render. Examples: '47', '1-30', '3, 5-10, 47-327'" },
    { key: "chunk_size", type: "int32", default: 4,
      description: "Frames per task; larger chunks amortise Blender start-up and keep the backend busy" },
    { key: "backend_address", type: "string", required: true, default: "tcp://127.0.0.1:5555",
      description: "Rerender backend each worker connects to (tcp://HOST:PORT); 127.0.0.1 = the worker's own GPU" },
    { key: "render_output_root", type: "string", subtype: "dir_path", required: true, visible: "submission",
      description: "Base directory of where render output is stored (an absolute path all workers can write)" },
    { key: "render_output_path", type: "string", subtype: "file_path", editable: false,
      eval: "str(Path(abspath(settings.render_output_root), jobname, '######'))",
      description: "Final file path of where render output will be saved" },
    { key: "blendfile", type: "string", required: true, visible: "web",
      description: "Path of the Blend file to render" },
    { key: "format", type: "string", required: true, visible: "web",
      eval: "C.scene.render.image_settings.file_format" },
  ],
};

function compileJob(job) {
  const settings = job.settings;
  if (!/^(tcp|ipc):\/\/\S+$/.test(settings.backend_address)) {
    throw `backend_address must look like tcp://HOST:PORT or ipc:///path, got '${settings.backend_address}'`;
  }
  const renderOutput = path.join(settings.render_output_root, job.name, "######");
  const setBackend = `import os; os.environ['RERENDER_BACKEND'] = ${JSON.stringify(settings.backend_address)}`;
  for (const chunk of frameChunker(settings.frames, settings.chunk_size)) {
    const task = author.Task(`render-${chunk}`, "blender");
    task.addCommand(author.Command("blender-render", {
      exe: "{blender}",
      exeArgs: "{blenderArgs}",
      argsBefore: [],
      blendfile: settings.blendfile,
      args: [
        "--python-expr", setBackend,
        "--render-output", renderOutput,
        "--render-format", settings.format,
        "--render-frame", chunk.replaceAll("-", ".."),
      ],
    }));
    job.addTask(task);
  }
}
