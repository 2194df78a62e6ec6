using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using Treaty.Cli;
using Treaty.Messaging.RabbitMq.Tests;

// Load generator for the Shop's checkout: a coordinator (`treaty serve`) and the three Shop services
// as child processes on loopback, as the demo runs them, each service on its own durable SQLite file.
// N clients each place a checkout of one book and wait until it has ended (a long poll on the
// coordinator, then the order, CONFIRMED), then place the next. One row per setup: the orchestrated saga, and the choreographed
// checkout (events through each service's outbox and inbox) on the embedded transport and on RabbitMQ.
// Setups run in turn, `--rounds` times, so that setups are compared in alternating runs.
//   dotnet run -c Release --project bench/Treaty.Bench.Shop -- [--clients 16] [--seconds 10] [--warmup 3]
//       [--setups saga,choreography,choreography-rabbitmq] [--rounds 2] [--rabbitmq URL]
// Without --rabbitmq a broker is started on loopback (rabbitmq-server from Debian, temp directory).
var clients = Arg("--clients", 16);
var seconds = Arg("--seconds", 10);
var warmup = Arg("--warmup", 3);
var rounds = Arg("--rounds", 2);
var setups = ArgText("--setups", "saga,choreography,choreography-rabbitmq").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
var rabbitMqUrl = ArgText("--rabbitmq", "");
foreach (var setup in setups)
{
    if (setup is not ("saga" or "tcc" or "2pc" or "3pc" or "choreography" or "choreography-rabbitmq"))
    {
        Console.Error.WriteLine($"--setups: unknown setup '{setup}' (saga, tcc, 2pc, 3pc, choreography, choreography-rabbitmq)");
        return 2;
    }
}

RabbitMqBroker? broker = null;
if (setups.Contains("choreography-rabbitmq") && rabbitMqUrl.Length == 0)
{
    broker = new RabbitMqBroker();
    await broker.InitializeAsync();
    rabbitMqUrl = broker.Uri.ToString();
}

try
{
    Console.WriteLine($"{Environment.ProcessorCount} cores, {clients} clients, {seconds} s measured after {warmup} s warm-up, {rounds} round(s)");
    var results = new List<Result>();
    for (var round = 1; round <= rounds; round++)
    {
        foreach (var setup in setups)
        {
            var result = await RunSetupAsync(setup, round);
            results.Add(result);
            Console.WriteLine($"round {round} {setup,-22} {result.Rate,8:N0} checkouts/s  p50 {result.P50,6:N1} ms  p99 {result.P99,6:N1} ms  machine CPU {result.CpuUsPerCheckout,6:N0} µs/checkout  errors {result.Errors}");
            Console.WriteLine($"        CPU µs per checkout: {result.CpuSplit}");
        }
    }

    Console.WriteLine();
    Console.WriteLine("| setup | checkouts/s | p50 ms | p99 ms | machine CPU µs/checkout | errors |");
    Console.WriteLine("|---|---:|---:|---:|---:|---:|");
    foreach (var group in results.GroupBy(r => r.Setup))
    {
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"| {group.Key} | {string.Join(" / ", group.Select(r => r.Rate.ToString("N0", CultureInfo.InvariantCulture)))} | {group.Average(r => r.P50):N1} | {group.Average(r => r.P99):N1} | {group.Average(r => r.CpuUsPerCheckout):N0} | {group.Sum(r => r.Errors)} |"));
    }

    return 0;
}
finally
{
    if (broker is not null)
    {
        await broker.DisposeAsync();
    }
}

async Task<Result> RunSetupAsync(string setup, int round)
{
    var protocol = setup.StartsWith("choreography", StringComparison.Ordinal) ? "choreography" : setup;
    List<string> shopArguments = ["--seed-scale", "100000"];
    if (setup == "choreography-rabbitmq")
    {
        shopArguments.AddRange(["--transport", "rabbitmq", "--rabbitmq", rabbitMqUrl]);
    }

    await using var environment = await DemoEnvironment.StartAsync(null, CancellationToken.None, shopArguments: shopArguments);
    using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = clients * 2 }) { Timeout = TimeSpan.FromSeconds(60) };
    var latencies = new List<double>[clients];
    long errors = 0;
    var measuring = false;
    long measured = 0;
    using var stop = new CancellationTokenSource();
    var tasks = Enumerable.Range(0, clients).Select(client => Task.Run(async () =>
    {
        latencies[client] = [];
        var customer = client % 2 == 0 ? "alice" : "bob";
        long i = 0;
        while (!stop.IsCancellationRequested)
        {
            var clock = Stopwatch.StartNew();
            try
            {
                var status = await CheckoutAsync(http, environment.CoordinatorUrl, environment.OrderUrl, customer, protocol, $"bench-{round}-{setup}-{client}-{i++}", stop.Token);
                if (status != "CONFIRMED")
                {
                    if (Interlocked.Increment(ref errors) == 1)
                    {
                        Console.Error.WriteLine($"first error ({setup}): the order is {status}");
                    }

                    continue;
                }

                if (Volatile.Read(ref measuring))
                {
                    latencies[client].Add(clock.Elapsed.TotalMilliseconds);
                    Interlocked.Increment(ref measured);
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e) when (e is HttpRequestException or InvalidOperationException or TaskCanceledException)
            {
                if (Interlocked.Increment(ref errors) == 1)
                {
                    Console.Error.WriteLine($"first error ({setup}): {e.Message}");
                }
            }
        }
    })).ToArray();

    await Task.Delay(TimeSpan.FromSeconds(warmup));
    var (unknownBefore, ordersBefore) = (Interlocked.Read(ref Polls.Unknown), Interlocked.Read(ref Polls.Orders));
    var processes = environment.Processes.Select(p => (Name: p.Name, Id: p.Id)).Append((Name: "load generator", Id: Environment.ProcessId)).ToArray();
    var processCpuBefore = processes.Select(p => ProcessCpuTime(p.Id)).ToArray();
    var cpuBefore = MachineCpuTime();
    var window = Stopwatch.StartNew();
    Volatile.Write(ref measuring, true);
    await Task.Delay(TimeSpan.FromSeconds(seconds));
    Volatile.Write(ref measuring, false);
    var count = Interlocked.Read(ref measured);
    var elapsed = window.Elapsed;
    var cpu = MachineCpuTime() - cpuBefore;
    var perProcess = processes.Select((p, i) => (p.Name, Us: count == 0 ? double.NaN : (ProcessCpuTime(p.Id) - processCpuBefore[i]).TotalMicroseconds / count)).ToArray();
    await stop.CancelAsync();
    await Task.WhenAll(tasks);

    var sorted = latencies.SelectMany(l => l).Order().ToArray();
    var machineUs = count == 0 ? double.NaN : cpu.TotalMicroseconds / count;
    var split = string.Join(", ", perProcess.Select(p => $"{p.Name} {p.Us:N0}").Append($"rest (broker, kernel threads) {machineUs - perProcess.Sum(p => p.Us):N0}"))
        + $"; per checkout {(double)(Interlocked.Read(ref Polls.Unknown) - unknownBefore) / count:N1} asks before the coordinator knew the gid, {(double)(Interlocked.Read(ref Polls.Orders) - ordersBefore) / count:N1} order reads";
    return new Result(setup, count / elapsed.TotalSeconds, Percentile(sorted, 0.50), Percentile(sorted, 0.99), machineUs, Interlocked.Read(ref errors), split);
}

// Places one checkout, waits for its transaction to end at the coordinator, then reads the order (again every 10 ms while PENDING); while the coordinator does not know the gid yet (the Order service submits or reports just after its 202), asks again every 20 ms.
static async Task<string?> CheckoutAsync(HttpClient http, string coordinatorUrl, string orderUrl, string customer, string protocol, string key, CancellationToken ct)
{
    var body = new JsonObject
    {
        ["customerId"] = customer,
        ["items"] = new JsonArray(new JsonObject { ["sku"] = "book", ["qty"] = 1 }),
        ["protocol"] = protocol,
    };
    using var request = new HttpRequestMessage(HttpMethod.Post, orderUrl + "/checkout") { Content = JsonContent.Create(body) };
    request.Headers.Add("Idempotency-Key", key);
    using var response = await http.SendAsync(request, ct);
    if (!response.IsSuccessStatusCode)
    {
        throw new InvalidOperationException($"checkout answered {(int)response.StatusCode}");
    }

    var placed = await response.Content.ReadFromJsonAsync<JsonNode>(ct);
    var orderId = placed?["orderId"]?.GetValue<string>() ?? throw new InvalidOperationException("checkout answered without an orderId");
    var gid = placed?["gid"]?.GetValue<string>() ?? throw new InvalidOperationException("checkout answered without a gid");

    // A long poll on the coordinator until the transaction (orchestrated or watched) has ended, then the
    // order, which the Order service decides at about the same moment. The Order service submits the
    // transaction (or reports order.created) just after its 202, so the gid may be unknown for a moment.
    var deadline = Stopwatch.StartNew();
    while (deadline.Elapsed < TimeSpan.FromSeconds(30))
    {
        using var ended = await http.GetAsync($"{coordinatorUrl}/api/v1/transactions/{gid}?wait=30s", ct);
        if (ended.StatusCode != System.Net.HttpStatusCode.NotFound)
        {
            ended.EnsureSuccessStatusCode();
            break;
        }

        Interlocked.Increment(ref Polls.Unknown);
        await Task.Delay(TimeSpan.FromMilliseconds(20), ct);
    }

    while (deadline.Elapsed < TimeSpan.FromSeconds(30))
    {
        var order = await http.GetFromJsonAsync<JsonNode>($"{orderUrl}/orders/{orderId}", ct);
        var status = order?["status"]?.GetValue<string>();
        Interlocked.Increment(ref Polls.Orders);
        if (status != "PENDING")
        {
            return status;
        }

        await Task.Delay(TimeSpan.FromMilliseconds(10), ct);
    }

    return "PENDING";
}

// The CPU time of the whole machine (every process: the load generator, the coordinator, the three
// services, the broker), from /proc/stat: user + nice + system + irq + softirq, in clock ticks of 10 ms.
static TimeSpan MachineCpuTime()
{
    var fields = File.ReadLines("/proc/stat").First().Split(' ', StringSplitOptions.RemoveEmptyEntries);
    long Ticks(int i) => long.Parse(fields[i], CultureInfo.InvariantCulture);
    var busy = Ticks(1) + Ticks(2) + Ticks(3) + Ticks(6) + Ticks(7);
    return TimeSpan.FromMilliseconds(busy * 10);
}

// A process's CPU time (user + system) from /proc/PID/stat, in clock ticks of 10 ms.
static TimeSpan ProcessCpuTime(int pid)
{
    var stat = File.ReadAllText($"/proc/{pid}/stat");
    var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
    return TimeSpan.FromMilliseconds((long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture)) * 10);
}

static double Percentile(double[] sorted, double p) => sorted.Length == 0 ? double.NaN : sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))];

int Arg(string name, int fallback) =>
    int.TryParse(ArgText(name, ""), CultureInfo.InvariantCulture, out var value) ? value : fallback;

string ArgText(string name, string fallback)
{
    var index = Array.IndexOf(args, name);
    return index >= 0 && index + 1 < args.Length ? args[index + 1] : fallback;
}

internal sealed record Result(string Setup, double Rate, double P50, double P99, double CpuUsPerCheckout, long Errors, string CpuSplit);

internal static class Polls
{
    public static long Unknown;
    public static long Orders;
}
