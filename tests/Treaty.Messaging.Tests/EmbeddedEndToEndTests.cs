using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Treaty.AspNetCore.Data;

namespace Treaty.Messaging.Tests;

/// <summary>
/// Two services wired as a user wires them (AddTreatyMessaging, MapTreatyMessaging, embedded
/// routes over loopback HTTP): the order service publishes order.created with its state change,
/// the wallet debits and answers payment.reserved, the order service confirms the order.
/// </summary>
public sealed class EmbeddedEndToEndTests : IAsyncLifetime
{
    private readonly TempDir _dir = new("treaty-messaging-e2e");
    private readonly List<WebApplication> _apps = [];

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var app in _apps)
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }

        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        _dir.Dispose();
    }

    [Fact]
    public async Task OrderCreated_TravelsToTheWallet_AndPaymentReservedComesBack_ConfirmingTheOrder()
    {
        var ordersPort = FreePort();
        var walletPort = FreePort();
        var ordersDb = new SqliteParticipantDatabase(Path.Combine(_dir.Path, "orders.db"));
        var walletDb = new SqliteParticipantDatabase(Path.Combine(_dir.Path, "wallet.db"));
        await ordersDb.ExecuteDdlAsync("CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT NOT NULL)", CancellationToken.None);
        await walletDb.ExecuteDdlAsync("CREATE TABLE debits (order_id TEXT NOT NULL, amount INTEGER NOT NULL)", CancellationToken.None);

        var orders = await StartAsync(ordersPort, services => services
            .AddTreatyMessaging(o => { o.ServiceName = "orders"; o.Database = ordersDb; o.RelayPollInterval = TimeSpan.FromSeconds(30); })
            .Subscribe("payment.reserved", async (tx, message, ct) =>
            {
                await using var confirm = tx.CreateCommand("UPDATE orders SET status = 'confirmed' WHERE id = @id", ("id", message.CorrelationId));
                await confirm.ExecuteNonQueryAsync(ct);
            })
            .UseEmbeddedTransport(routes => routes.Route("order.created", new Uri($"http://127.0.0.1:{walletPort}/"))));
        await StartAsync(walletPort, services => services
            .AddTreatyMessaging(o => { o.ServiceName = "wallet"; o.Database = walletDb; o.RelayPollInterval = TimeSpan.FromSeconds(30); })
            .Subscribe("order.created", provider =>
            {
                var outbox = provider.GetRequiredService<Outbox>();
                return async (tx, message, ct) =>
                {
                    var amount = message.Json().GetProperty("amount").GetInt32();
                    await using var debit = tx.CreateCommand("INSERT INTO debits (order_id, amount) VALUES (@id, @amount)", ("id", message.CorrelationId), ("amount", amount));
                    await debit.ExecuteNonQueryAsync(ct);
                    await outbox.PublishAsync(tx, "payment.reserved", message.CorrelationId, JsonDocument.Parse($$"""{"amount":{{amount}}}""").RootElement, ct);
                };
            })
            .UseEmbeddedTransport(routes => routes.Route("payment.reserved", new Uri($"http://127.0.0.1:{ordersPort}/"))));

        var outbox = orders.Services.GetRequiredService<Outbox>();
        await using (var tx = await ordersDb.BeginAsync(CancellationToken.None))
        {
            await using var insert = tx.CreateCommand("INSERT INTO orders (id, status) VALUES ('o-1', 'pending')");
            await insert.ExecuteNonQueryAsync();
            await outbox.PublishAsync(tx, "order.created", "o-1", JsonDocument.Parse("""{"amount":30}""").RootElement, CancellationToken.None);
            await tx.CommitAsync(CancellationToken.None);
        }

        // The poll is 30 s: arriving well within that shows the nudge on publish drives the relay.
        var deadline = DateTimeOffset.UtcNow.AddSeconds(15);
        while (await ScalarAsync(ordersDb, "SELECT status FROM orders WHERE id = 'o-1'") is not "confirmed")
        {
            DateTimeOffset.UtcNow.ShouldBeLessThan(deadline, "the order was not confirmed");
            await Task.Delay(50);
        }

        (await ScalarAsync(walletDb, "SELECT COUNT(*) FROM debits")).ShouldBe(1L);
        (await orders.Services.GetRequiredService<DeadLetters>().ListAsync(CancellationToken.None)).ShouldBeEmpty();
    }

    [Fact]
    public async Task Endpoint_AnswersRetryWith503AndRetryAfter_DeadLetteredAndDuplicatesWith200_MalformedWith400()
    {
        var port = FreePort();
        var db = new SqliteParticipantDatabase(Path.Combine(_dir.Path, "wallet.db"));
        var logs = new CapturingLoggerProvider();
        var fixedCause = false;
        var wallet = await StartAsync(port, logs: logs, configure: services => services
            .AddTreatyMessaging(o => { o.ServiceName = "wallet"; o.Database = db; o.MaxAttempts = 2; o.RetryDelay = TimeSpan.FromSeconds(2); })
            .Subscribe("order.created", (tx, message, ct) => message.CorrelationId == "poison" && !Volatile.Read(ref fixedCause)
                ? throw new InvalidOperationException("poison")
                : Task.CompletedTask));
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}/") };

        async Task<HttpResponseMessage> PostAsync(string id, string type, string correlationId)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "treaty/messages") { Content = new StringContent("{}") };
            request.Headers.Add("Treaty-Message-Id", id);
            request.Headers.Add("Treaty-Message-Type", type);
            request.Headers.Add("Treaty-Correlation-Id", correlationId);
            request.Headers.Add("Treaty-Source", "orders");
            request.Headers.Add("Treaty-Created-At", "2026-12-06T12:00:00.0000000Z");
            return await http.SendAsync(request);
        }

        var retry = await PostAsync("m-poison", "order.created", "poison");
        retry.StatusCode.ShouldBe(HttpStatusCode.ServiceUnavailable);
        retry.Headers.RetryAfter!.Delta.ShouldBe(TimeSpan.FromSeconds(2));
        (await PostAsync("m-poison", "order.created", "poison")).StatusCode.ShouldBe(HttpStatusCode.OK); // dead-lettered
        (await PostAsync("m-good", "order.created", "o-1")).StatusCode.ShouldBe(HttpStatusCode.OK);
        (await PostAsync("m-good", "order.created", "o-1")).StatusCode.ShouldBe(HttpStatusCode.OK); // duplicate
        (await PostAsync("m-other", "nobody.subscribed", "o-1")).StatusCode.ShouldBe(HttpStatusCode.ServiceUnavailable);
        (await http.PostAsync("treaty/messages", new StringContent("{}"))).StatusCode.ShouldBe(HttpStatusCode.BadRequest);

        var letter = (await wallet.Services.GetRequiredService<DeadLetters>().ListAsync(CancellationToken.None)).ShouldHaveSingleItem();
        letter.MessageId.ShouldBe("m-poison");
        letter.Attempts.Count.ShouldBe(2);
        var failed = logs.Logs.Where(log => log.EventId.Id is 4504 or 4505).ToList();
        failed.Select(log => log.EventId.Id).ShouldBe([4504, 4505]);
        failed.ShouldAllBe(log => log.ScopeGid == "poison");
        logs.Logs.ShouldContain(log => log.EventId.Id == 4503 && log.ScopeGid == "o-1"); // the duplicate

        // The operator fixes the cause and replays: the hosted replay worker handles it.
        Volatile.Write(ref fixedCause, true);
        var deadLetters = wallet.Services.GetRequiredService<DeadLetters>();
        (await deadLetters.ReplayAsync(letter.Id, CancellationToken.None)).ShouldBeTrue();
        var deadline = DateTimeOffset.UtcNow.AddSeconds(10);
        while ((await deadLetters.ListAsync(CancellationToken.None)).Single().Status != "replayed")
        {
            DateTimeOffset.UtcNow.ShouldBeLessThan(deadline, "the replay was not handled");
            await Task.Delay(50);
        }

        (await PostAsync("m-poison", "order.created", "poison")).StatusCode.ShouldBe(HttpStatusCode.OK); // now a duplicate
        logs.Logs.Count(log => log.EventId.Id == 4507).ShouldBe(1);
    }

    private async Task<WebApplication> StartAsync(int port, Action<IServiceCollection> configure, CapturingLoggerProvider? logs = null)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls($"http://127.0.0.1:{port}");
        builder.Logging.ClearProviders();
        if (logs is not null)
        {
            builder.Logging.SetMinimumLevel(LogLevel.Debug);
            builder.Logging.AddProvider(logs);
        }

        configure(builder.Services);
        var app = builder.Build();
        app.MapTreatyMessaging();
        _apps.Add(app);
        await app.StartAsync();
        return app;
    }

    private static async Task<object?> ScalarAsync(ParticipantDatabase database, string sql)
    {
        await using var tx = await database.BeginAsync(CancellationToken.None);
        await using var command = tx.CreateCommand(sql);
        return await command.ExecuteScalarAsync();
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
