using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

// The floor under any coordinator that calls each step over HTTP. A relay process (Kestrel and an
// HttpClient, no store, no engine, no state) takes one POST and makes the --branches calls to a no-op
// participant one after the other, then answers; --concurrency clients drive it in a closed loop, and
// then, in the same run, call the participant themselves (the uncoordinated baseline of `treaty bench`).
// The relay's share of the baseline is what a coordinator could reach if its durable work cost nothing.
//   dotnet run -c Release --project bench/Treaty.Bench.Relay -- --concurrency 64 --branches 3 --warmup 20 --duration 10
// The relay is a child process (this program with --serve), stopped by its pid at the end.
Options options;
try
{
    options = Options.Parse(args);
}
catch (Exception ex) when (ex is ArgumentException or FormatException or IndexOutOfRangeException)
{
    Console.Error.WriteLine($"Treaty.Bench.Relay: {(ex is IndexOutOfRangeException ? "an option lacks its value" : ex.Message)}");
    Console.Error.WriteLine(Options.Usage);
    return 2;
}

if (options.Serve is { } serve)
{
    await Relay.ServeAsync(serve.Port, serve.Participant, options.Branches);
    return 0;
}

return await Driver.RunAsync(options);

internal sealed record Options(int Concurrency, int Branches, int WarmupSeconds, int DurationSeconds, (int Port, string Participant)? Serve)
{
    public const string Usage = "Options: --concurrency N (64) --branches N (3) --warmup SECONDS (20) --duration SECONDS (10)";

    public static Options Parse(string[] args)
    {
        var concurrency = 64;
        var branches = 3;
        var warmup = 20;
        var duration = 10;
        (int, string)? serve = null;
        for (var i = 0; i < args.Length; i++)
        {
            int Next() => int.Parse(args[++i], CultureInfo.InvariantCulture);
            switch (args[i])
            {
                case "--concurrency": concurrency = Next(); break;
                case "--branches": branches = Next(); break;
                case "--warmup": warmup = Next(); break;
                case "--duration": duration = Next(); break;
                case "--serve": serve = (Next(), args[++i]); break;
                default: throw new ArgumentException($"Unknown option '{args[i]}'.");
            }
        }

        if (concurrency < 1 || branches < 1 || warmup < 0 || duration < 1)
        {
            throw new ArgumentException("--concurrency, --branches and --duration must be at least 1, --warmup at least 0.");
        }

        return new Options(concurrency, branches, warmup, duration, serve);
    }
}

internal static class Relay
{
    /// <summary>POST /relay: the branches' calls one after the other, then a body the size of a transaction view.</summary>
    public static async Task ServeAsync(int port, string participant, int branches)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls($"http://127.0.0.1:{port}");
        builder.Logging.ClearProviders();
        var app = builder.Build();
        using var http = new HttpClient(new SocketsHttpHandler { UseCookies = false, AllowAutoRedirect = false });
        var step = Encoding.UTF8.GetBytes("""{"gid":"relay","branch":"b0","op":"action","attempt":1,"payload":{"amount":1}}""");
        var answer = """{"state":"committed","detail":"{{x}}"}""".Replace("{{x}}", new string('x', 900), StringComparison.Ordinal);
        app.MapGet("/ready", () => "ready");
        app.MapPost("/relay", async (HttpRequest request) =>
        {
            using (var reader = new StreamReader(request.Body))
            {
                await reader.ReadToEndAsync(request.HttpContext.RequestAborted);
            }

            for (var b = 0; b < branches; b++)
            {
                using var content = new ByteArrayContent(step);
                content.Headers.ContentType = new("application/json");
                using var response = await http.PostAsync($"{participant}/b{b}/action", content, request.HttpContext.RequestAborted);
                await response.Content.ReadAsByteArrayAsync(request.HttpContext.RequestAborted);
                response.EnsureSuccessStatusCode();
            }

            return Results.Text(answer, "application/json");
        });
        await app.RunAsync();
    }
}

internal static class Driver
{
    public static async Task<int> RunAsync(Options options)
    {
        var participant = WebApplication.CreateSlimBuilder();
        participant.WebHost.UseUrls("http://127.0.0.1:0");
        participant.Logging.ClearProviders();
        await using var app = participant.Build();
        app.MapPost("/{**path}", async (HttpRequest request) =>
        {
            using var reader = new StreamReader(request.Body);
            await reader.ReadToEndAsync(request.HttpContext.RequestAborted);
            return Results.Text("{}", "application/json");
        });
        await app.StartAsync();
        var participantUrl = app.Urls.Single();

        var port = FreePort();
        using var relay = Process.Start(new ProcessStartInfo("dotnet")
        {
            ArgumentList = { typeof(Driver).Assembly.Location, "--serve", port.ToString(CultureInfo.InvariantCulture), participantUrl, "--branches", options.Branches.ToString(CultureInfo.InvariantCulture) },
            UseShellExecute = false,
        }) ?? throw new InvalidOperationException("The relay did not start.");
        try
        {
            using var http = new HttpClient(new SocketsHttpHandler { UseCookies = false });
            var relayUrl = $"http://127.0.0.1:{port}";
            await WaitReadyAsync(http, relayUrl);
            var submit = Encoding.UTF8.GetBytes("{\"spec\":\"" + new string('s', 600) + "\"}");
            var step = Encoding.UTF8.GetBytes("""{"gid":"base","branch":"b0","op":"action","payload":{"amount":1}}""");

            var relayed = await MeasureAsync(options, options.WarmupSeconds, relay.Id, () => PostAsync(http, relayUrl + "/relay", submit));
            var baseline = await MeasureAsync(options, 5, null, async () =>
            {
                for (var b = 0; b < options.Branches; b++)
                {
                    await PostAsync(http, $"{participantUrl}/b{b}/action", step);
                }
            });
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"relay {relayed.Throughput:F0}/s p99 {relayed.P99Ms:F1} ms, relay process CPU {relayed.CpuUsPerOp:F0} µs/op | baseline {baseline.Throughput:F0}/s p99 {baseline.P99Ms:F1} ms | relay / baseline {relayed.Throughput / baseline.Throughput:P0}"));
            return 0;
        }
        finally
        {
            relay.Kill(entireProcessTree: true);
            await relay.WaitForExitAsync();
        }
    }

    private static async Task PostAsync(HttpClient http, string url, byte[] body)
    {
        using var content = new ByteArrayContent(body);
        content.Headers.ContentType = new("application/json");
        using var response = await http.PostAsync(url, content);
        await response.Content.ReadAsByteArrayAsync();
        response.EnsureSuccessStatusCode();
    }

    private static async Task<(double Throughput, double P99Ms, double CpuUsPerOp)> MeasureAsync(
        Options options, int warmupSeconds, int? pid, Func<Task> operation)
    {
        var latencies = new List<double>[options.Concurrency];
        var measuring = false;
        var stop = false;
        var workers = Enumerable.Range(0, options.Concurrency).Select(w => Task.Run(async () =>
        {
            latencies[w] = new List<double>(4096);
            while (!Volatile.Read(ref stop))
            {
                var started = Stopwatch.GetTimestamp();
                await operation();
                if (Volatile.Read(ref measuring))
                {
                    latencies[w].Add(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
                }
            }
        })).ToArray();
        await Task.Delay(TimeSpan.FromSeconds(warmupSeconds));
        var cpuBefore = pid is { } p ? CpuTicks(p) : 0;
        var clock = Stopwatch.StartNew();
        Volatile.Write(ref measuring, true);
        await Task.Delay(TimeSpan.FromSeconds(options.DurationSeconds));
        Volatile.Write(ref measuring, false);
        var seconds = clock.Elapsed.TotalSeconds;
        var cpu = pid is { } q ? CpuTicks(q) - cpuBefore : 0;
        Volatile.Write(ref stop, true);
        await Task.WhenAll(workers);
        var all = latencies.SelectMany(l => l).Order().ToArray();
        // /proc/PID/stat counts CPU in clock ticks of 10 ms.
        return (all.Length / seconds, all[(int)(0.99 * (all.Length - 1))], cpu * 10_000.0 / all.Length);
    }

    private static long CpuTicks(int pid)
    {
        var fields = File.ReadAllText($"/proc/{pid}/stat").Split(')')[1].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        return long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
    }

    private static async Task WaitReadyAsync(HttpClient http, string url)
    {
        for (var i = 0; i < 300; i++)
        {
            try
            {
                using var response = await http.GetAsync(url + "/ready");
                if (response.IsSuccessStatusCode)
                {
                    return;
                }
            }
            catch (HttpRequestException)
            {
            }

            await Task.Delay(100);
        }

        throw new InvalidOperationException("The relay did not answer within 30 s.");
    }

    private static int FreePort()
    {
        using var socket = new TcpListener(IPAddress.Loopback, 0);
        socket.Start();
        return ((IPEndPoint)socket.LocalEndpoint).Port;
    }
}
