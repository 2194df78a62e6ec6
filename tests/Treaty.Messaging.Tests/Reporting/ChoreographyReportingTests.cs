using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Npgsql;
using Treaty.AspNetCore.Data;
using Treaty.Core.Model;
using Treaty.Messaging.Tests.Support;

namespace Treaty.Messaging.Tests.Reporting;

/// <summary>
/// <c>AddTreatyMessaging(...).ReportTo(coordinator, ...)</c> against a real coordinator in this
/// process: what a service publishes through its outbox reaches the coordinator's timeline once,
/// whatever fails in between, and only if the publishing transaction committed. One subclass per dialect.
/// </summary>
public abstract partial class ChoreographyReportingTests : IAsyncLifetime
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);
    private readonly List<IHost> _hosts = [];
    private InProcessCoordinator? _coordinator;

    /// <summary>A fresh database of the subclass's dialect.</summary>
    protected abstract Task<ParticipantDatabase> CreateDatabaseAsync(string name);

    /// <summary>Releases the subclass's databases.</summary>
    protected abstract Task DisposeDatabasesAsync();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var host in _hosts.ToList())
        {
            await StopAsync(host);
        }

        if (_coordinator is not null)
        {
            await _coordinator.DisposeAsync();
        }

        await DisposeDatabasesAsync();
    }

    [Fact]
    public async Task EveryCommittedEvent_IsReportedOnce_WithTheOutcomeAndTimeoutThePublisherStated()
    {
        _coordinator = await InProcessCoordinator.StartAsync();
        var database = await CreateDatabaseAsync("orders");
        var host = await StartHostAsync("orders", database, _coordinator.BaseAddress, report =>
        {
            report.NextEventTimeout = TimeSpan.FromSeconds(20);
            report.Outcome("order.confirmed", ChoreographyOutcome.Completed);
        });
        var outbox = host.Services.GetRequiredService<Outbox>();

        var published = new List<string>();
        // Two sagas, their events interleaved, one of them in one transaction with two events.
        published.Add(await PublishAsync(database, outbox, "order.created", "saga-a"));
        published.Add(await PublishAsync(database, outbox, "order.created", "saga-b"));
        published.Add(await PublishAsync(database, outbox, "payment.reserved", "saga-a", new PublishOptions { NextEventTimeout = TimeSpan.FromSeconds(5) }));
        await using (var tx = await database.BeginAsync(CancellationToken.None))
        {
            published.Add(await outbox.PublishAsync(tx, "payment.failed", "saga-b", Payload("saga-b"), CancellationToken.None));
            published.Add(await outbox.PublishAsync(tx, "order.cancelled", "saga-b", Payload("saga-b"), new PublishOptions { Outcome = ChoreographyOutcome.Compensated }, CancellationToken.None));
            await tx.CommitAsync(CancellationToken.None);
        }

        published.Add(await PublishAsync(database, outbox, "order.confirmed", "saga-a"));

        (await WaitForStatusAsync("saga-a")).ShouldBe("committed");
        (await WaitForStatusAsync("saga-b")).ShouldBe("aborted");
        await EventuallyAsync(async () => await ScalarAsync(database, "SELECT COUNT(*) FROM treaty_reports WHERE reported_at IS NULL") == 0);

        var a = await TimelineAsync("saga-a");
        var b = await TimelineAsync("saga-b");
        a.Concat(b).Select(e => e.MessageId).ShouldBe(published, ignoreOrder: true); // each once, none other
        a.Select(e => e.Type).ShouldBe(["order.created", "payment.reserved", "order.confirmed"], ignoreOrder: true);
        a.ShouldAllBe(e => e.Service == "orders");
        a.Single(e => e.Type == "order.confirmed").Detail.ShouldContain("outcome completed");
        b.Single(e => e.Type == "order.cancelled").Detail.ShouldContain("outcome compensated");
        (await ScalarAsync(database, "SELECT COUNT(*) FROM treaty_reports WHERE result = 'recorded'")).ShouldBe(published.Count);

        // What the coordinator was told: the default timeout, the per-event one, none after the outcome.
        (await TextAsync(database, "SELECT CAST(timeout_ms AS TEXT) FROM treaty_reports WHERE type = 'order.created' AND correlation_id = 'saga-a'")).ShouldBe("20000");
        (await TextAsync(database, "SELECT CAST(timeout_ms AS TEXT) FROM treaty_reports WHERE type = 'payment.reserved'")).ShouldBe("5000");
        (await TextAsync(database, "SELECT COALESCE(CAST(timeout_ms AS TEXT), 'none') || ' ' || outcome FROM treaty_reports WHERE type = 'order.confirmed'")).ShouldBe("none completed");
    }

    [Fact]
    public async Task CoordinatorDown_TheEventsStillTravel_AndTheReportsArriveOnceItIsUp()
    {
        var port = FreePort();
        var address = new Uri($"http://127.0.0.1:{port}/");
        var database = await CreateDatabaseAsync("orders");
        var host = await StartHostAsync("orders", database, address, report => report.MaxRetryDelay = TimeSpan.FromMilliseconds(500));
        var outbox = host.Services.GetRequiredService<Outbox>();

        var first = await PublishAsync(database, outbox, "order.created", "saga-down");
        // The relay is not held back by the reporter: the event leaves while its report cannot.
        await EventuallyAsync(async () => await ScalarAsync(database, "SELECT COUNT(*) FROM treaty_outbox WHERE sent_at IS NULL") == 0);
        await EventuallyAsync(async () => await ScalarAsync(database, "SELECT attempts FROM treaty_reports") >= 2);
        (await TextAsync(database, "SELECT last_error FROM treaty_reports")).ShouldNotBeNullOrEmpty();
        (await ScalarAsync(database, "SELECT COUNT(*) FROM treaty_reports WHERE reported_at IS NOT NULL")).ShouldBe(0);
        var second = await PublishAsync(database, outbox, "order.confirmed", "saga-down", new PublishOptions { Outcome = ChoreographyOutcome.Completed });

        _coordinator = await InProcessCoordinator.StartAsync(configureOptions: o => o.Urls = $"http://127.0.0.1:{port}");

        (await WaitForStatusAsync("saga-down")).ShouldBe("committed");
        // In whichever order they arrive: the coordinator records an event after the end without changing the outcome.
        await EventuallyAsync(async () => (await TimelineAsync("saga-down")).Count == 2);
        (await TimelineAsync("saga-down")).Select(e => e.MessageId).ShouldBe([first, second], ignoreOrder: true);
        (await _coordinator.Client.GetAsync("saga-down"))!.Status.ShouldBe("committed");
    }

    [Fact]
    public async Task OnceTheCoordinatorAnswers_TheReportsThatWaitedForItGoAtOnce_NotAfterTheirBackoff()
    {
        var port = FreePort();
        var time = new ManualTimeProvider(); // never advanced: no backoff ever runs out, no poll ever fires
        var database = await CreateDatabaseAsync("orders");
        var host = await StartHostAsync("orders", database, new Uri($"http://127.0.0.1:{port}/"), report => report.MaxRetryDelay = report.RetryDelay = TimeSpan.FromMinutes(1), time);
        var outbox = host.Services.GetRequiredService<Outbox>();

        var first = await PublishAsync(database, outbox, "order.created", "saga-waited");
        await EventuallyAsync(async () => await ScalarAsync(database, "SELECT attempts FROM treaty_reports") == 1); // refused connection: backing off

        _coordinator = await InProcessCoordinator.StartAsync(configureOptions: o => o.Urls = $"http://127.0.0.1:{port}");
        var second = await PublishAsync(database, outbox, "payment.reserved", "saga-waited"); // its commit nudges the reporter

        await EventuallyAsync(async () => (await _coordinator.Client.GetAsync("saga-waited")) is not null && (await TimelineAsync("saga-waited")).Count == 2);
        (await TimelineAsync("saga-waited")).Select(e => e.MessageId).ShouldBe([first, second], ignoreOrder: true);
    }

    [Fact]
    public async Task CrashBetweenTheCommitAndTheReport_TheRowIsDurable_AndTheNextProcessReportsIt()
    {
        _coordinator = await InProcessCoordinator.StartAsync();
        var database = await CreateDatabaseAsync("orders");

        // The first process publishes and dies right after its commit: its reporter never ran.
        string messageId;
        var crashed = BuildHost("orders", database, _coordinator.BaseAddress, configure: null);
        try
        {
            await MessagingStarter.EnsureSchemaAsync(database, CancellationToken.None);
            messageId = await PublishAsync(database, crashed.Services.GetRequiredService<Outbox>(), "order.created", "saga-crash");
        }
        finally
        {
            crashed.Dispose(); // no StopAsync: nothing of it runs again
        }

        (await ScalarAsync(database, "SELECT COUNT(*) FROM treaty_reports WHERE reported_at IS NULL")).ShouldBe(1);
        (await _coordinator.Client.GetAsync("saga-crash")).ShouldBeNull();

        // The next process on the same database reports what the first one left.
        await StartHostAsync("orders", database, _coordinator.BaseAddress);
        await EventuallyAsync(async () => (await _coordinator.Client.GetAsync("saga-crash")) is not null);
        (await TimelineAsync("saga-crash")).Select(e => e.MessageId).ShouldBe([messageId]);
        await EventuallyAsync(async () => await TextAsync(database, "SELECT result FROM treaty_reports") == "recorded");
    }

    [Fact]
    public async Task CrashAfterTheCoordinatorAnswered_BeforeTheMark_TheReportGoesAgain_AndTheTimelineHasItOnce()
    {
        _coordinator = await InProcessCoordinator.StartAsync();
        var database = await CreateDatabaseAsync("orders");
        var host = await StartHostAsync("orders", database, _coordinator.BaseAddress);
        var messageId = await PublishAsync(database, host.Services.GetRequiredService<Outbox>(), "order.created", "saga-twice");
        await EventuallyAsync(async () => await TextAsync(database, "SELECT result FROM treaty_reports") == "recorded");
        await StopAsync(host);

        // The mark lost, as if the process died between the coordinator's answer and its update.
        await ExecuteAsync(database, "UPDATE treaty_reports SET reported_at = NULL, result = NULL");
        await StartHostAsync("orders", database, _coordinator.BaseAddress);

        await EventuallyAsync(async () => await TextAsync(database, "SELECT result FROM treaty_reports") == "duplicate");
        (await TimelineAsync("saga-twice")).Select(e => e.MessageId).ShouldBe([messageId]);
    }

    [Fact]
    public async Task RolledBackTransaction_ReportsNothing()
    {
        _coordinator = await InProcessCoordinator.StartAsync();
        var database = await CreateDatabaseAsync("orders");
        var host = await StartHostAsync("orders", database, _coordinator.BaseAddress);
        var outbox = host.Services.GetRequiredService<Outbox>();

        await using (var tx = await database.BeginAsync(CancellationToken.None))
        {
            await outbox.PublishAsync(tx, "order.created", "saga-rolled-back", Payload("saga-rolled-back"), CancellationToken.None);
            // disposed without a commit: rolled back
        }

        var committed = await PublishAsync(database, outbox, "order.created", "saga-committed");
        await EventuallyAsync(async () => (await _coordinator.Client.GetAsync("saga-committed")) is not null);
        // Reported in publication order within a batch: once the later event is in, the earlier would be too.
        await EventuallyAsync(async () => await ScalarAsync(database, "SELECT COUNT(*) FROM treaty_reports WHERE reported_at IS NULL") == 0);

        (await _coordinator.Client.GetAsync("saga-rolled-back")).ShouldBeNull();
        (await ScalarAsync(database, "SELECT COUNT(*) FROM treaty_reports WHERE correlation_id = 'saga-rolled-back'")).ShouldBe(0);
        (await TimelineAsync("saga-committed")).Select(e => e.MessageId).ShouldBe([committed]);
    }

    [Fact]
    public async Task AnEventTheCoordinatorRefuses_IsMarkedRefused_AndDoesNotHoldBackTheOthers()
    {
        _coordinator = await InProcessCoordinator.StartAsync();
        var database = await CreateDatabaseAsync("orders");
        var host = await StartHostAsync("orders", database, _coordinator.BaseAddress);
        var outbox = host.Services.GetRequiredService<Outbox>();

        await using (var tx = await database.BeginAsync(CancellationToken.None))
        {
            await outbox.PublishAsync(tx, "order.created", "saga-before", Payload("x"), CancellationToken.None);
            // Not a valid gid: the coordinator answers 400 to a batch holding it, for good.
            await outbox.PublishAsync(tx, "order.created", "not a gid!", Payload("x"), CancellationToken.None);
            await outbox.PublishAsync(tx, "order.created", "saga-after", Payload("x"), CancellationToken.None);
            await tx.CommitAsync(CancellationToken.None);
        }

        await EventuallyAsync(async () => await ScalarAsync(database, "SELECT COUNT(*) FROM treaty_reports WHERE reported_at IS NULL") == 0);
        (await TextAsync(database, "SELECT result FROM treaty_reports WHERE correlation_id = 'not a gid!'")).ShouldBe("refused");
        (await TextAsync(database, "SELECT last_error FROM treaty_reports WHERE correlation_id = 'not a gid!'")).ShouldNotBeNullOrEmpty();
        (await _coordinator.Client.GetAsync("saga-before")).ShouldNotBeNull();
        (await _coordinator.Client.GetAsync("saga-after")).ShouldNotBeNull();
    }

    [Fact]
    public async Task ABatchTooLargeForTheCoordinator_GoesOneByOne_AndAnEventTooLargeAlone_IsRefused()
    {
        _coordinator = await InProcessCoordinator.StartAsync(configureOptions: o => o.MaxRequestBodyBytes = 4096);
        var database = await CreateDatabaseAsync("orders");
        var host = await StartHostAsync("orders", database, _coordinator.BaseAddress);
        var outbox = host.Services.GetRequiredService<Outbox>();
        var padding = new string('x', 1500);

        await using (var tx = await database.BeginAsync(CancellationToken.None))
        {
            foreach (var gid in new[] { "saga-big-1", "saga-big-2", "saga-big-3" }) // about 5 KB together, under 2 KB each
            {
                await outbox.PublishAsync(tx, "order.created", gid, JsonDocument.Parse($$"""{"padding":"{{padding}}"}""").RootElement, CancellationToken.None);
            }

            await outbox.PublishAsync(tx, "order.created", "saga-huge", JsonDocument.Parse($$"""{"padding":"{{padding + padding + padding}}"}""").RootElement, CancellationToken.None);
            await tx.CommitAsync(CancellationToken.None);
        }

        await EventuallyAsync(async () => await ScalarAsync(database, "SELECT COUNT(*) FROM treaty_reports WHERE reported_at IS NULL") == 0);
        (await ScalarAsync(database, "SELECT COUNT(*) FROM treaty_reports WHERE result = 'recorded'")).ShouldBe(3);
        (await TextAsync(database, "SELECT result FROM treaty_reports WHERE correlation_id = 'saga-huge'")).ShouldBe("refused");
        (await _coordinator.Client.GetAsync("saga-huge")).ShouldBeNull();
    }

    [Fact]
    public async Task ReporterLogs_AboutATransaction_CarryItsGidScope_OneLinePerGid()
    {
        // One batch of three transactions' events, the coordinator down (4530, a line per gid),
        // then up and refusing one of them for good (4531).
        var port = FreePort();
        var logs = new CapturingLoggerProvider();
        var database = await CreateDatabaseAsync("orders");
        var host = await StartHostAsync("orders", database, new Uri($"http://127.0.0.1:{port}/"), report => report.MaxRetryDelay = TimeSpan.FromMilliseconds(300), logs: logs);
        var outbox = host.Services.GetRequiredService<Outbox>();
        string[] gids = ["saga-scope-a", "saga-scope-b", "not a gid!"];
        await using (var tx = await database.BeginAsync(CancellationToken.None))
        {
            await outbox.PublishAsync(tx, "order.created", gids[0], Payload("a"), CancellationToken.None);
            await outbox.PublishAsync(tx, "order.created", gids[1], Payload("b"), CancellationToken.None);
            await outbox.PublishAsync(tx, "payment.reserved", gids[0], Payload("a"), CancellationToken.None);
            await outbox.PublishAsync(tx, "order.created", gids[2], Payload("x"), CancellationToken.None);
            await tx.CommitAsync(CancellationToken.None);
        }

        await EventuallyAsync(() => Task.FromResult(gids.All(g => logs.Logs.Any(l => l.EventId.Id == 4530 && l.Message.Contains(g, StringComparison.Ordinal)))));
        _coordinator = await InProcessCoordinator.StartAsync(configureOptions: o => o.Urls = $"http://127.0.0.1:{port}");
        await EventuallyAsync(async () => await ScalarAsync(database, "SELECT COUNT(*) FROM treaty_reports WHERE reported_at IS NULL") == 0);

        var lines = logs.Logs.Where(l => l.Category == typeof(ChoreographyReporter).FullName).ToList();
        // The first pass read the whole batch: saga-scope-a's two events on one line.
        lines.ShouldContain(l => l.EventId.Id == 4530 && l.Message.StartsWith("Could not report 2 choreography event(s) of saga-scope-a ", StringComparison.Ordinal));
        lines.ShouldContain(l => l.EventId.Id == 4531 && l.ScopeGid == gids[2]);
        CapturedLog.ShouldEachBeInTheScopeOfTheGidTheyName(lines, gids);
    }

    [Fact]
    public async Task AnEventNotToReport_HasNoReportRow()
    {
        var database = await CreateDatabaseAsync("orders");
        var host = BuildHost("orders", database, new Uri("http://127.0.0.1:9/"), report => report.Exclude("audit.logged"));
        try
        {
            await MessagingStarter.EnsureSchemaAsync(database, CancellationToken.None);
            var outbox = host.Services.GetRequiredService<Outbox>();
            await PublishAsync(database, outbox, "audit.logged", "saga-x");
            await PublishAsync(database, outbox, "order.created", "saga-x", new PublishOptions { Report = false });
            await PublishAsync(database, outbox, "order.created", "saga-x");

            (await ScalarAsync(database, "SELECT COUNT(*) FROM treaty_outbox")).ShouldBe(3);
            (await ScalarAsync(database, "SELECT COUNT(*) FROM treaty_reports")).ShouldBe(1);
        }
        finally
        {
            host.Dispose();
        }
    }

    private static IHost BuildHost(string service, ParticipantDatabase database, Uri coordinator, Action<ChoreographyReportingOptions>? configure, TimeProvider? time = null, CapturingLoggerProvider? logs = null)
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Logging.ClearProviders();
        if (logs is not null)
        {
            builder.Logging.AddProvider(logs);
        }

        if (time is not null)
        {
            builder.Services.AddSingleton(time); // before AddTreatyMessaging, whose TryAdd keeps it
        }

        builder.Services
            .AddTreatyMessaging(o =>
            {
                o.ServiceName = service;
                o.Database = database;
                o.RetryDelay = TimeSpan.FromMilliseconds(50);
                o.MaxRetryDelay = TimeSpan.FromMilliseconds(500);
            })
            .UseTransport(_ => new InMemoryTransport()) // nobody subscribes: the relay's sends succeed at once
            .ReportTo(coordinator, apiKey: null, report =>
            {
                report.RetryDelay = TimeSpan.FromMilliseconds(50);
                report.MaxRetryDelay = TimeSpan.FromMilliseconds(500);
                report.RequestTimeout = TimeSpan.FromSeconds(10);
                configure?.Invoke(report);
            });
        return builder.Build();
    }

    private async Task<IHost> StartHostAsync(string service, ParticipantDatabase database, Uri coordinator, Action<ChoreographyReportingOptions>? configure = null, TimeProvider? time = null, CapturingLoggerProvider? logs = null)
    {
        var host = BuildHost(service, database, coordinator, configure, time, logs);
        _hosts.Add(host);
        await host.StartAsync();
        return host;
    }

    private async Task StopAsync(IHost host)
    {
        if (!_hosts.Remove(host))
        {
            return;
        }

        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        try
        {
            await host.StopAsync(timeout.Token);
        }
        finally
        {
            host.Dispose();
        }
    }

    private static JsonElement Payload(string gid) => JsonDocument.Parse($$"""{"orderId":"{{gid}}"}""").RootElement;

    private static async Task<string> PublishAsync(ParticipantDatabase database, Outbox outbox, string type, string gid, PublishOptions? options = null)
    {
        await using var tx = await database.BeginAsync(CancellationToken.None);
        var id = options is null
            ? await outbox.PublishAsync(tx, type, gid, Payload(gid), CancellationToken.None)
            : await outbox.PublishAsync(tx, type, gid, Payload(gid), options, CancellationToken.None);
        await tx.CommitAsync(CancellationToken.None);
        return id;
    }

    private async Task<string> WaitForStatusAsync(string gid)
    {
        string? status = null;
        await EventuallyAsync(async () =>
        {
            status = (await _coordinator!.Client.GetAsync(gid))?.Status;
            return status is "committed" or "aborted";
        });
        return status!;
    }

    private async Task<List<TimelineEvent>> TimelineAsync(string gid)
    {
        var events = await _coordinator!.Client.GetEventsAsync(gid);
        return [.. events.Events.Where(e => e.Kind == "event").Select(e => new TimelineEvent(MessageIdOf(e.Detail), e.Op!, e.Branch!, e.Detail ?? ""))];
    }

    private static string MessageIdOf(string? detail) =>
        MessageId().Match(detail ?? "") is { Success: true } match ? match.Groups[1].Value : throw new InvalidOperationException($"No message id in '{detail}'.");

    [GeneratedRegex(@"^message ([^;\s]+)")]
    private static partial Regex MessageId();

    private static async Task EventuallyAsync(Func<Task<bool>> condition)
    {
        var clock = Stopwatch.StartNew();
        while (!await condition())
        {
            clock.Elapsed.ShouldBeLessThan(Patience, "the condition never held");
            await Task.Delay(25);
        }
    }

    private static async Task<long> ScalarAsync(ParticipantDatabase database, string sql)
    {
        await using var tx = await database.BeginAsync(CancellationToken.None);
        await using var command = tx.CreateCommand(sql);
        var value = Convert.ToInt64(await command.ExecuteScalarAsync(), System.Globalization.CultureInfo.InvariantCulture);
        await tx.CommitAsync(CancellationToken.None);
        return value;
    }

    private static async Task<string?> TextAsync(ParticipantDatabase database, string sql)
    {
        await using var tx = await database.BeginAsync(CancellationToken.None);
        await using var command = tx.CreateCommand(sql);
        var value = await command.ExecuteScalarAsync();
        await tx.CommitAsync(CancellationToken.None);
        return value as string;
    }

    private static async Task ExecuteAsync(ParticipantDatabase database, string sql)
    {
        await using var tx = await database.BeginAsync(CancellationToken.None);
        await using var command = tx.CreateCommand(sql);
        await command.ExecuteNonQueryAsync();
        await tx.CommitAsync(CancellationToken.None);
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private sealed record TimelineEvent(string MessageId, string Type, string Service, string Detail);
}

public sealed class SqliteChoreographyReportingTests : ChoreographyReportingTests
{
    private readonly TempDir _dir = new("treaty-reporting");

    protected override Task<ParticipantDatabase> CreateDatabaseAsync(string name) =>
        Task.FromResult<ParticipantDatabase>(new SqliteParticipantDatabase(Path.Combine(_dir.Path, name + ".db")));

    protected override Task DisposeDatabasesAsync()
    {
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        _dir.Dispose();
        return Task.CompletedTask;
    }
}

[Collection(PostgresCollection.Name)]
public sealed class PostgreSqlChoreographyReportingTests(PostgresFixture postgres) : ChoreographyReportingTests
{
    private readonly List<NpgsqlDataSource> _sources = [];

    protected override async Task<ParticipantDatabase> CreateDatabaseAsync(string name)
    {
        var source = NpgsqlDataSource.Create(await postgres.Server.CreateDatabaseAsync("report_" + name));
        _sources.Add(source);
        return new PostgreSqlParticipantDatabase(source);
    }

    protected override async Task DisposeDatabasesAsync()
    {
        foreach (var source in _sources)
        {
            await source.DisposeAsync();
        }
    }
}

/// <summary>The pure part: which outcome and timeout an event is reported with.</summary>
public sealed class ChoreographyReportingOptionsTests
{
    [Fact]
    public void Resolve_ThePublishersOptionsWin_ThenThePerTypeSettings_ThenTheDefault()
    {
        var options = new ChoreographyReportingOptions { NextEventTimeout = TimeSpan.FromSeconds(30) }
            .Outcome("order.confirmed", ChoreographyOutcome.Completed)
            .NextEventTimeoutAfter("payment.reserved", TimeSpan.FromSeconds(5));

        options.Resolve("order.created", null).ShouldBe(new ReportedAs(null, 30_000));
        options.Resolve("payment.reserved", null).ShouldBe(new ReportedAs(null, 5_000));
        options.Resolve("payment.reserved", new PublishOptions { NextEventTimeout = TimeSpan.FromSeconds(1) }).ShouldBe(new ReportedAs(null, 1_000));
        options.Resolve("order.confirmed", null).ShouldBe(new ReportedAs("completed", null)); // nothing follows the end
        options.Resolve("order.confirmed", new PublishOptions { Outcome = ChoreographyOutcome.Failed }).ShouldBe(new ReportedAs("failed", null));
        options.Resolve("order.created", new PublishOptions { Outcome = ChoreographyOutcome.Compensated }).ShouldBe(new ReportedAs("compensated", null));
        new ChoreographyReportingOptions().Resolve("order.created", null).ShouldBe(new ReportedAs(null, null)); // the coordinator's default
    }

    [Fact]
    public void Resolve_AnExcludedTypeOrReportFalse_IsNotReported()
    {
        var options = new ChoreographyReportingOptions().Exclude("audit.logged");

        options.Resolve("audit.logged", null).ShouldBeNull();
        options.Resolve("order.created", new PublishOptions { Report = false }).ShouldBeNull();
    }

    [Fact]
    public void ReportTo_Twice_Throws_AndARelativeCoordinatorUrlIsRefused()
    {
        var messaging = new ServiceCollection().AddTreatyMessaging(o => o.ServiceName = "orders");
        Should.Throw<ArgumentException>(() => messaging.ReportTo(new Uri("/coordinator", UriKind.Relative)));
        messaging.ReportTo(new Uri("http://127.0.0.1:5080/"));

        Should.Throw<InvalidOperationException>(() => messaging.ReportTo(new Uri("http://127.0.0.1:5081/")));
    }

    [Fact]
    public void ATimeoutTheCoordinatorWouldRefuse_IsRefusedAtThePublish_AndOptionsAreValidated()
    {
        Should.Throw<ArgumentOutOfRangeException>(() => new ChoreographyReportingOptions().Resolve("x", new PublishOptions { NextEventTimeout = TimeSpan.Zero }));
        Should.Throw<ArgumentOutOfRangeException>(() => new ChoreographyReportingOptions().NextEventTimeoutAfter("x", TimeSpan.FromDays(31)));
        Should.Throw<InvalidOperationException>(() => new ChoreographyReportingOptions { BatchSize = 101 }.Validate());
        Should.Throw<InvalidOperationException>(() => new ChoreographyReportingOptions { RetryDelay = TimeSpan.FromSeconds(2), MaxRetryDelay = TimeSpan.FromSeconds(1) }.Validate());
    }
}
