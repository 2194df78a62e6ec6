using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text.Json;
using MassTransit;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Treaty.Messaging.RabbitMq.Tests;

namespace Treaty.Bench.Peer;

/// <summary>One run: broker, participant, bus, warm-up, measured window, JSON; everything it started is stopped at the end.</summary>
internal static class PeerRun
{
    private const string QueuePrefix = "treaty-peer";
    private static readonly TimeSpan SlipTimeout = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan BusStartTimeout = TimeSpan.FromSeconds(60);

    public static async Task<int> RunAsync(PeerOptions options)
    {
        RabbitMqBroker? broker = null;
        WebApplication? selfParticipant = null;
        ServiceProvider? services = null;
        IBusControl? bus = null;
        HttpClient? http = null;
        try
        {
            var rabbitMq = options.RabbitMq;
            string brokerName;
            if (rabbitMq is null)
            {
                Console.WriteLine("starting a RabbitMQ node on loopback...");
                var node = new RabbitMqBroker();
                try
                {
                    // It stops what it started itself when it fails.
                    await node.InitializeAsync();
                }
                catch (Exception e) when (e is InvalidOperationException or TimeoutException or IOException or System.ComponentModel.Win32Exception)
                {
                    throw new PeerFailure($"the RabbitMQ broker did not start: {e.Message}", e);
                }

                broker = node;
                rabbitMq = broker.Uri;
                brokerName = string.Create(CultureInfo.InvariantCulture, $"rabbitmq-server started on 127.0.0.1:{broker.Port} in {broker.FirstStartTime.TotalSeconds:0} s");
            }
            else
            {
                brokerName = $"{rabbitMq.Host}:{rabbitMq.Port} (--rabbitmq)";
            }

            var participant = options.Participant;
            if (participant is null)
            {
                selfParticipant = await StartSelfParticipantAsync();
                participant = new Uri(selfParticipant.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First() + "/");
            }

            var brokerProcess = BrokerProcess.Listening(rabbitMq.Port);
            var cpuScope = brokerProcess is null
                ? "this process only (the broker's process was not found on this machine)"
                : $"this process{(selfParticipant is null ? "" : " (with the --self-participant)")} and the broker {brokerProcess.Name} pid {brokerProcess.ProcessId}";

            http = new HttpClient(new SocketsHttpHandler { PooledConnectionIdleTimeout = TimeSpan.FromMinutes(5) }) { Timeout = SlipTimeout };
            var tracker = new SlipTracker();
            var prefetch = Math.Max(16, options.Concurrency);
            var executeAddresses = new Uri[options.Branches];
            services = BuildBus(options, rabbitMq, new BranchActivity(http, participant), tracker, prefetch, executeAddresses);
            bus = services.GetRequiredService<IBusControl>();
            using (var timeout = new CancellationTokenSource(BusStartTimeout))
            {
                try
                {
                    await bus.StartAsync(timeout.Token);
                }
                catch (Exception e) when (e is OperationCanceledException or MassTransitException)
                {
                    throw new PeerFailure($"the MassTransit bus did not connect to RabbitMQ at {rabbitMq.Host}:{rabbitMq.Port} within {BusStartTimeout.TotalSeconds:0} s: {e.Message}", e);
                }
            }

            Console.WriteLine($"MassTransit Courier: {options.Branches} steps over RabbitMQ ({brokerName}), participant {participant}, {options.Concurrency} clients, {options.DurationSeconds} s measured after {options.WarmupSeconds} s warm-up, {Environment.ProcessorCount} cores");
            var result = await MeasureAsync(options, bus, tracker, executeAddresses, brokerProcess) with
            {
                CpuScope = cpuScope,
                Broker = brokerName,
                PrefetchCount = prefetch,
            };

            var directory = Path.GetDirectoryName(Path.GetFullPath(options.JsonFile));
            if (directory is not null)
                Directory.CreateDirectory(directory);
            await File.WriteAllTextAsync(options.JsonFile, JsonSerializer.Serialize(result, PeerJsonContext.Default.PeerResult) + "\n");
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"masstransit: {result.Throughput:0} slips/s, p50 {result.P50Ms:0.0} ms, p95 {result.P95Ms:0.0} ms, p99 {result.P99Ms:0.0} ms, CPU {result.CpuUsPerTx:0} µs/slip ({(brokerProcess is null ? "this process" : "this process + broker")}), RSS {result.RssMb:0} MB, {result.Completed} completed, {result.Errors} errors ({options.Branches} steps, {options.Concurrency} clients) -> {options.JsonFile}"));
            if (result.Completed == 0)
                throw new PeerFailure($"no routing slip completed in the measured window ({result.Errors} errors)");
            return 0;
        }
        finally
        {
            if (bus is not null)
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                try
                {
                    await bus.StopAsync(timeout.Token);
                }
                catch (OperationCanceledException)
                {
                    // The broker is stopped next anyway.
                }
            }

            if (services is not null)
                await services.DisposeAsync();
            // After the bus: a step still running while it stops may still call the participant.
            http?.Dispose();
            if (selfParticipant is not null)
                await selfParticipant.DisposeAsync();
            if (broker is not null)
                await broker.DisposeAsync();
        }
    }

    /// <summary>
    /// One execute and one compensate queue per step (step i is its own service, as Treaty's branches are), and one
    /// queue for the RoutingSlipCompleted/Faulted events. MassTransit's RabbitMQ defaults are kept: durable queues,
    /// persistent messages and publisher confirms (set explicitly here so that the figure cannot silently change);
    /// only the prefetch is raised to the number of clients, so that no step queue caps the concurrency.
    /// </summary>
    private static ServiceProvider BuildBus(PeerOptions options, Uri rabbitMq, BranchActivity activity, SlipTracker tracker, int prefetch, Uri[] executeAddresses)
    {
        var services = new ServiceCollection();
        services.AddLogging(logging => logging.AddSimpleConsole(console => console.SingleLine = true).SetMinimumLevel(LogLevel.Warning));
        services.AddMassTransit(bus => bus.UsingRabbitMq((_, rabbit) =>
        {
            var credentials = rabbitMq.UserInfo.Split(':', 2);
            var virtualHost = rabbitMq.AbsolutePath.Length > 1 ? Uri.UnescapeDataString(rabbitMq.AbsolutePath[1..]) : "/";
            rabbit.Host(rabbitMq.Host, (ushort)(rabbitMq.IsDefaultPort ? 5672 : rabbitMq.Port), virtualHost, host =>
            {
                host.Username(credentials.Length > 0 && credentials[0].Length > 0 ? Uri.UnescapeDataString(credentials[0]) : "guest");
                host.Password(credentials.Length > 1 ? Uri.UnescapeDataString(credentials[1]) : "guest");
                host.PublisherConfirmation = true;
            });
            rabbit.Durable = true;
            rabbit.PrefetchCount = prefetch;

            for (var i = 0; i < options.Branches; i++)
            {
                Uri? compensateAddress = null;
                rabbit.ReceiveEndpoint($"{QueuePrefix}-b{i}-compensate", endpoint =>
                {
                    compensateAddress = endpoint.InputAddress;
                    endpoint.CompensateActivityHost<BranchActivity, BranchLog>(() => activity, _ => { });
                });
                var step = i;
                rabbit.ReceiveEndpoint($"{QueuePrefix}-b{i}-execute", endpoint =>
                {
                    executeAddresses[step] = endpoint.InputAddress;
                    endpoint.ExecuteActivityHost<BranchActivity, BranchArguments>(
                        compensateAddress ?? throw new InvalidOperationException("the compensate endpoint was not configured first"), () => activity, _ => { });
                });
            }

            rabbit.ReceiveEndpoint($"{QueuePrefix}-events", endpoint => endpoint.Consumer(() => new SlipEventsConsumer(tracker)));
        }));
        return services.BuildServiceProvider();
    }

    private static async Task<PeerResult> MeasureAsync(PeerOptions options, IBus bus, SlipTracker tracker, Uri[] executeAddresses, BrokerProcess? brokerProcess)
    {
        var clock = TimeProvider.System;
        var latencies = new List<double>[options.Concurrency];
        var errors = 0L;
        var phase = Phase.Warmup;
        string? firstError = null;
        var clients = Enumerable.Range(0, options.Concurrency).Select(c => Task.Run(async () =>
        {
            latencies[c] = new List<double>(100_000);
            while (Volatile.Read(ref phase) != Phase.Stopping)
            {
                var trackingNumber = NewId.NextGuid();
                var builder = new RoutingSlipBuilder(trackingNumber);
                for (var i = 0; i < executeAddresses.Length; i++)
                    builder.AddActivity($"b{i}", executeAddresses[i], new BranchArguments { Branch = i });
                var slip = builder.Build();
                var ended = tracker.Register(trackingNumber);
                var started = clock.GetTimestamp();
                bool completed;
                try
                {
                    await bus.Execute(slip);
                    completed = await ended.WaitAsync(SlipTimeout, clock);
                }
                catch (Exception e) when (e is TimeoutException or MassTransitException or IOException)
                {
                    tracker.Forget(trackingNumber);
                    Interlocked.CompareExchange(ref firstError, $"{e.GetType().Name}: {e.Message}", null);
                    completed = false;
                }

                if (Volatile.Read(ref phase) == Phase.Measuring)
                {
                    if (completed)
                        latencies[c].Add(clock.GetElapsedTime(started).TotalMilliseconds);
                    else
                        Interlocked.Increment(ref errors);
                }
            }
        })).ToArray();

        await Task.Delay(TimeSpan.FromSeconds(options.WarmupSeconds), clock);
        using var self = Process.GetCurrentProcess();
        self.Refresh();
        var selfCpu0 = self.TotalProcessorTime;
        var brokerCpu0 = brokerProcess?.CpuTime() ?? TimeSpan.Zero;
        var windowStart = clock.GetTimestamp();
        Volatile.Write(ref phase, Phase.Measuring);
        await Task.Delay(TimeSpan.FromSeconds(options.DurationSeconds), clock);
        Volatile.Write(ref phase, Phase.Stopping);
        var elapsed = clock.GetElapsedTime(windowStart).TotalSeconds;
        self.Refresh();
        var cpu = self.TotalProcessorTime - selfCpu0 + ((brokerProcess?.CpuTime() ?? TimeSpan.Zero) - brokerCpu0);
        await Task.WhenAll(clients);
        if (firstError is not null)
            Console.Error.WriteLine($"first error: {firstError}");

        var sorted = latencies.SelectMany(l => l).Order().ToArray();
        self.Refresh();
        return new PeerResult
        {
            Throughput = Math.Round(sorted.Length / elapsed, 1),
            P50Ms = Percentile(sorted, 0.50),
            P95Ms = Percentile(sorted, 0.95),
            P99Ms = Percentile(sorted, 0.99),
            CpuUsPerTx = sorted.Length == 0 ? 0 : Math.Round(cpu.TotalMicroseconds / sorted.Length, 1),
            RssMb = Math.Round(self.PeakWorkingSet64 / (1024.0 * 1024.0), 1),
            Completed = sorted.Length,
            Errors = errors,
            Branches = options.Branches,
            Concurrency = options.Concurrency,
            DurationSeconds = Math.Round(elapsed, 3),
            WarmupSeconds = options.WarmupSeconds,
        };
    }

    private static double Percentile(double[] sorted, double p) =>
        sorted.Length == 0 ? 0 : Math.Round(sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))], 2);

    private static async Task<WebApplication> StartSelfParticipantAsync()
    {
        var builder = WebApplication.CreateSlimBuilder([]);
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.WebHost.UseKestrel(kestrel => kestrel.Listen(IPAddress.Loopback, 0));
        var app = builder.Build();
        app.MapPost("/{**path}", () => Results.Text("{}", "application/json"));
        await app.StartAsync();
        return app;
    }

    // An int, not an enum, so that Volatile reads and writes it.
    private static class Phase
    {
        public const int Warmup = 0;
        public const int Measuring = 1;
        public const int Stopping = 2;
    }
}
