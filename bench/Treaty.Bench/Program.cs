using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Treaty.Server;

// Load generator: N concurrent clients submit 3-step sagas (durable, SQLite WAL + synchronous=FULL)
// against no-op participants on loopback and wait for each to commit; then, in the same run, the
// uncoordinated baseline: the same clients call the three participants themselves.
//   dotnet run -c Release --project bench/Treaty.Bench -- [--clients 64] [--seconds 10] [--warmup 2]
var clients = Arg("--clients", 64);
var seconds = Arg("--seconds", 10);
var warmup = Arg("--warmup", 2);

var dataDir = Path.Combine(Path.GetTempPath(), "treaty-bench-" + Guid.NewGuid().ToString("N")[..8]);
var participantPort = FreePort();
var coordinatorPort = FreePort();
var participantUrl = $"http://127.0.0.1:{participantPort}";
var coordinatorUrl = $"http://127.0.0.1:{coordinatorPort}";

await using var participant = BuildParticipant(participantUrl);
await participant.StartAsync();
await using var coordinator = TreatyServer.CreateApp(
    new TreatyServerOptions { Urls = coordinatorUrl, DataDir = dataDir },
    b => b.Logging.SetMinimumLevel(LogLevel.Warning));
await coordinator.StartAsync();

using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = clients * 2 }) { Timeout = TimeSpan.FromSeconds(60) };

Console.WriteLine($"Treaty bench: {clients} clients, {seconds} s measured after {warmup} s warm-up, {Environment.ProcessorCount} cores");
var saga = await MeasureAsync("Treaty saga (3 steps, durable)", (i, ct) => SagaAsync(http, coordinatorUrl, participantUrl, i, ct));
var baseline = await MeasureAsync("baseline: client calls 3 participants itself", (i, ct) => BaselineAsync(http, participantUrl, i, ct));

Console.WriteLine();
Console.WriteLine("| run | ops/s | p50 ms | p99 ms | errors |");
Console.WriteLine("|---|---:|---:|---:|---:|");
foreach (var r in new[] { saga, baseline })
{
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {r.Name} | {r.Rate:0} | {r.P50:0.0} | {r.P99:0.0} | {r.Errors} |"));
}

await coordinator.StopAsync();
await participant.StopAsync();
try
{
    Directory.Delete(dataDir, recursive: true);
}
catch (IOException)
{
}

return saga.Errors == 0 ? 0 : 1;

async Task<Result> MeasureAsync(string name, Func<long, CancellationToken, Task<bool>> operation)
{
    var latencies = new List<double>[clients];
    var errors = 0L;
    var measuring = false;
    var counter = 0L;
    using var stop = new CancellationTokenSource();
    var workers = Enumerable.Range(0, clients).Select(w => Task.Run(async () =>
    {
        latencies[w] = new List<double>(100_000);
        while (!stop.IsCancellationRequested)
        {
            var i = Interlocked.Increment(ref counter);
            var started = Stopwatch.GetTimestamp();
            bool ok;
            try
            {
                ok = await operation(i, CancellationToken.None);
            }
            catch (HttpRequestException)
            {
                ok = false;
            }

            if (Volatile.Read(ref measuring))
            {
                if (ok)
                {
                    latencies[w].Add(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
                }
                else
                {
                    Interlocked.Increment(ref errors);
                }
            }
        }
    })).ToArray();

    await Task.Delay(TimeSpan.FromSeconds(warmup));
    Volatile.Write(ref measuring, true);
    var clock = Stopwatch.StartNew();
    using var process = Process.GetCurrentProcess();
    var (user0, total0) = (process.UserProcessorTime, process.TotalProcessorTime);
    await Task.Delay(TimeSpan.FromSeconds(seconds));
    Volatile.Write(ref measuring, false);
    var elapsed = clock.Elapsed.TotalSeconds;
    process.Refresh();
    var (user, total) = (process.UserProcessorTime - user0, process.TotalProcessorTime - total0);
    await stop.CancelAsync();
    await Task.WhenAll(workers);
    var all = latencies.SelectMany(l => l).Order().ToArray();
    var result = new Result(name, all.Length / elapsed, Percentile(all, 0.50), Percentile(all, 0.99), errors);
    // CPU of the whole process (load generator, coordinator and participant together) per operation.
    var cpuPerOp = all.Length == 0 ? double.NaN : total.TotalMilliseconds * 1000 / all.Length;
    var sysShare = total.TotalMilliseconds == 0 ? 0 : 100 * (total - user).TotalMilliseconds / total.TotalMilliseconds;
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"{name}: {result.Rate:0}/s, p50 {result.P50:0.0} ms, p99 {result.P99:0.0} ms, errors {errors}, CPU {cpuPerOp:0} us/op ({sysShare:0}% kernel)"));
    return result;
}

static async Task<bool> SagaAsync(HttpClient http, string coordinator, string participant, long i, CancellationToken ct)
{
    var body = $$"""
    {"gid":"bench-{{i}}-{{Guid.NewGuid():N}}","protocol":"saga","payload":{"amount":1},
     "branches":[
      {"name":"order","action":"{{participant}}/ok","compensate":"{{participant}}/ok"},
      {"name":"payment","action":"{{participant}}/ok","compensate":"{{participant}}/ok"},
      {"name":"inventory","action":"{{participant}}/ok","compensate":"{{participant}}/ok"}]}
    """;
    using var content = new StringContent(body, Encoding.UTF8, "application/json");
    using var response = await http.PostAsync(coordinator + "/api/v1/transactions?wait=30s", content, ct);
    var text = await response.Content.ReadAsStringAsync(ct);
    return response.StatusCode == HttpStatusCode.OK && text.Contains("\"status\":\"committed\"", StringComparison.Ordinal);
}

static async Task<bool> BaselineAsync(HttpClient http, string participant, long i, CancellationToken ct)
{
    for (var step = 0; step < 3; step++)
    {
        var envelope = $$$"""{"gid":"base-{{{i}}}","branch":"b{{{step}}}","op":"action","payload":{"amount":1}}""";
        using var content = new StringContent(envelope, Encoding.UTF8, "application/json");
        using var response = await http.PostAsync(participant + "/ok", content, ct);
        if (!response.IsSuccessStatusCode)
        {
            return false;
        }
    }

    return true;
}

static WebApplication BuildParticipant(string url)
{
    var builder = WebApplication.CreateSlimBuilder();
    builder.WebHost.UseUrls(url);
    builder.Logging.SetMinimumLevel(LogLevel.Warning);
    var app = builder.Build();
    app.MapPost("/ok", async (HttpRequest request) =>
    {
        // Read the body like a real participant would.
        using var reader = new StreamReader(request.Body);
        await reader.ReadToEndAsync();
        return Results.Text("{\"ok\":true}", "application/json");
    });
    return app;
}

static double Percentile(double[] sorted, double p) => sorted.Length == 0 ? double.NaN : sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))];

static int FreePort()
{
    using var listener = new TcpListener(IPAddress.Loopback, 0);
    listener.Start();
    var port = ((IPEndPoint)listener.LocalEndpoint).Port;
    listener.Stop();
    return port;
}

int Arg(string name, int fallback)
{
    var index = Array.IndexOf(args, name);
    return index >= 0 && index + 1 < args.Length && int.TryParse(args[index + 1], CultureInfo.InvariantCulture, out var value) ? value : fallback;
}

internal sealed record Result(string Name, double Rate, double P50, double P99, long Errors);
