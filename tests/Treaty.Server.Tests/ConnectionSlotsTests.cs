using System.Diagnostics;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Server.Security;

namespace Treaty.Server.Tests;

/// <summary>
/// The branch invoker's connection slots: at most MaxConnectionsPerParticipant calls to one
/// participant at once, and a call waiting for a slot has built nothing yet (no span, no request),
/// so thousands of transactions waiting on a busy participant stay small; its timeout runs while it waits.
/// </summary>
[Collection(nameof(ConnectionSlotsTests))]
public sealed class ConnectionSlotsTests
{
    [Theory]
    [InlineData("http://127.0.0.1:5000/pay/charge", "http://127.0.0.1:5000")]
    [InlineData("http://127.0.0.1:5000", "http://127.0.0.1:5000")]
    [InlineData("https://payments.internal?x=1", "https://payments.internal")]
    [InlineData("http://[::1]:8080/a#b", "http://[::1]:8080")]
    [InlineData("http://h:1#frag", "http://h:1")]
    public void Origin_IsSchemeAndAuthority(string url, string origin) =>
        ConnectionSlots.Origin(url).ToString().ShouldBe(origin);

    [Fact]
    public async Task BusyParticipant_OnlyMaxCallsAreBuilt_TheOthersWaitWithoutASpan_ThenAllAnswer()
    {
        await using var participant = await HoldingParticipant.StartAsync();
        using var spans = new SpanCounter();
        using var invoker = Invoker(maxConnections: 2);

        var calls = Enumerable.Range(0, 5)
            .Select(i => invoker.InvokeAsync(Call($"slots-{i}", participant.Url, TimeSpan.FromSeconds(30)), CancellationToken.None))
            .ToList();
        await participant.WaitForHeldAsync(2);
        await Task.Delay(300); // time for a third call to arrive, were it let through

        participant.Held.ShouldBe(2);
        spans.Started.ShouldBe(2); // the three waiting calls have not started their client span

        participant.Release();
        var outcomes = await Task.WhenAll(calls);
        outcomes.ShouldAllBe(o => o.Kind == OutcomeKind.Succeeded);
        participant.MaxHeldAtOnce.ShouldBe(2);
        spans.Started.ShouldBe(5);
    }

    [Fact]
    public async Task CallWaitingForASlot_TimesOutWithItsOwnTimeout_AndIsNeverSent()
    {
        await using var participant = await HoldingParticipant.StartAsync();
        using var invoker = Invoker(maxConnections: 1);
        var first = invoker.InvokeAsync(Call("slots-first", participant.Url, TimeSpan.FromSeconds(30)), CancellationToken.None);
        await participant.WaitForHeldAsync(1);

        var waiting = await invoker.InvokeAsync(Call("slots-waiting", participant.Url, TimeSpan.FromMilliseconds(300)), CancellationToken.None);

        waiting.Kind.ShouldBe(OutcomeKind.Unknown);
        waiting.Error.ShouldBe("no connection to the participant within 300 ms (every one of its connections busy)");
        participant.Received.ShouldBe(1);
        participant.Release();
        (await first).Kind.ShouldBe(OutcomeKind.Succeeded);
    }

    private static HttpBranchInvoker Invoker(int maxConnections) => new(
        new TreatyServerOptions { MaxConnectionsPerParticipant = maxConnections }, TimeProvider.System,
        NullLogger<HttpBranchInvoker>.Instance, new ParticipantAllowlist([]));

    private static BranchCall Call(string gid, string url, TimeSpan timeout) => new(gid, "b", "action", $"{url}/{gid}", 1, "{}", timeout);

    /// <summary>Client spans of branch calls started in this test (the collection runs alone).</summary>
    private sealed class SpanCounter : IDisposable
    {
        private readonly ActivityListener _listener;
        private int _started;

        public SpanCounter()
        {
            _listener = new ActivityListener
            {
                ShouldListenTo = source => source.Name == TreatyTelemetry.Name,
                Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllData,
                ActivityStarted = activity =>
                {
                    // The gid tag is set after the start: count every branch span (this collection runs alone).
                    if (activity.OperationName.StartsWith("treaty.branch", StringComparison.Ordinal))
                    {
                        Interlocked.Increment(ref _started);
                    }
                },
            };
            ActivitySource.AddActivityListener(_listener);
        }

        public int Started => Volatile.Read(ref _started);

        public void Dispose() => _listener.Dispose();
    }

    /// <summary>A participant on 127.0.0.1 that holds every answer until released.</summary>
    private sealed class HoldingParticipant : IAsyncDisposable
    {
        private readonly WebApplication _app;
        private readonly TaskCompletionSource _release = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _held;
        private int _maxHeld;
        private int _received;

        private HoldingParticipant(WebApplication app) => _app = app;

        public string Url => _app.Urls.Single();

        public int Held => Volatile.Read(ref _held);

        public int MaxHeldAtOnce => Volatile.Read(ref _maxHeld);

        public int Received => Volatile.Read(ref _received);

        public static async Task<HoldingParticipant> StartAsync()
        {
            var builder = WebApplication.CreateSlimBuilder();
            builder.WebHost.UseUrls("http://127.0.0.1:0");
            builder.Logging.SetMinimumLevel(LogLevel.Warning);
            var app = builder.Build();
            var participant = new HoldingParticipant(app);
            app.Run(async context =>
            {
                Interlocked.Increment(ref participant._received);
                var held = Interlocked.Increment(ref participant._held);
                for (var max = participant.MaxHeldAtOnce; held > max; max = participant.MaxHeldAtOnce)
                {
                    Interlocked.CompareExchange(ref participant._maxHeld, held, max);
                }

                await participant._release.Task.WaitAsync(context.RequestAborted);
                Interlocked.Decrement(ref participant._held);
                await Results.Ok().ExecuteAsync(context);
            });
            await app.StartAsync();
            return participant;
        }

        public async Task WaitForHeldAsync(int count)
        {
            var deadline = Stopwatch.StartNew();
            while (Held < count)
            {
                deadline.Elapsed.ShouldBeLessThan(TimeSpan.FromSeconds(20), $"{Held} of {count} calls held");
                await Task.Delay(20);
            }
        }

        public void Release() => _release.TrySetResult();

        public async ValueTask DisposeAsync()
        {
            Release();
            await _app.DisposeAsync();
        }
    }
}

/// <summary>Runs alone: it listens to the process-wide <c>Treaty</c> activity source.</summary>
[CollectionDefinition(nameof(ConnectionSlotsTests), DisableParallelization = true)]
public sealed class ConnectionSlotsTestsCollection;
