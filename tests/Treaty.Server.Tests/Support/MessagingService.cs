using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.Signatures;
using Treaty.Messaging;

namespace Treaty.Testing.DeadLetterSupport;

/// <summary>
/// A real service on loopback built as a user builds one: Treaty.Messaging on its own SQLite file,
/// the embedded transport's endpoint, callback verification with <see cref="Secret"/> and
/// <c>MapTreatyDeadLetters()</c>. It subscribes to <c>stock.reserve</c>; the handler records every
/// message it handles in its table <c>handled</c>, and throws for a correlation id starting with
/// "poison" until <see cref="FixCause"/> (one attempt: the first failure dead-letters it).
/// Shared by the server and the dashboard tests (linked into both).
/// </summary>
public sealed class MessagingService : IAsyncDisposable
{
    public const string Secret = "dead-letter-callback-secret-0123";
    public const string MessageType = "stock.reserve";

    private readonly WebApplication _app;
    private readonly TempDir _dir;
    private readonly SqliteParticipantDatabase _database;
    private readonly HttpClient _http;
    private int _fixed;

    private MessagingService(WebApplication app, TempDir dir, SqliteParticipantDatabase database)
    {
        _app = app;
        _dir = dir;
        _database = database;
        BaseAddress = new Uri(app.Urls.Single() + "/");
        _http = new HttpClient { BaseAddress = BaseAddress, Timeout = TimeSpan.FromSeconds(30) };
    }

    public Uri BaseAddress { get; }

    public DeadLetters DeadLetters => _app.Services.GetRequiredService<DeadLetters>();

    /// <summary>Starts the service; <paramref name="secret"/> is its callback secret (null: none).</summary>
    public static async Task<MessagingService> StartAsync(string name = "inventory", string? secret = Secret, bool mapDeadLetters = true)
    {
        var dir = new TempDir("treaty-dl-service");
        var database = new SqliteParticipantDatabase(Path.Combine(dir.Path, name + ".db"));
        WebApplication? app = null;
        try
        {
            await database.ExecuteDdlAsync("CREATE TABLE IF NOT EXISTS handled (message_id TEXT NOT NULL, correlation_id TEXT NOT NULL)", CancellationToken.None);
            var builder = WebApplication.CreateSlimBuilder();
            builder.WebHost.UseUrls("http://127.0.0.1:0");
            builder.Logging.ClearProviders();
            MessagingService? self = null;
            builder.Services.AddTreatyCallbackVerification(o => o.Secret = secret);
            builder.Services
                .AddTreatyMessaging(o =>
                {
                    o.ServiceName = name;
                    o.Database = database;
                    o.MaxAttempts = 1;
                    o.RetryDelay = TimeSpan.FromMilliseconds(100);
                    o.RelayPollInterval = TimeSpan.FromSeconds(30);
                })
                .Subscribe(MessageType, async (tx, message, ct) =>
                {
                    if (message.CorrelationId.StartsWith("poison", StringComparison.Ordinal) && Volatile.Read(ref self!._fixed) == 0)
                    {
                        throw new InvalidOperationException($"no stock row for order {message.CorrelationId} (the test's cause)");
                    }

                    await using var insert = tx.CreateCommand("INSERT INTO handled (message_id, correlation_id) VALUES (@m, @c)", ("m", message.MessageId), ("c", message.CorrelationId));
                    await insert.ExecuteNonQueryAsync(ct);
                });
            app = builder.Build();
            app.MapTreatyMessaging();
            if (mapDeadLetters)
            {
                app.MapTreatyDeadLetters();
            }

            await app.StartAsync();
            self = new MessagingService(app, dir, database);
            return self;
        }
        catch
        {
            if (app is not null)
            {
                await app.DisposeAsync();
            }

            dir.Dispose();
            throw;
        }
    }

    /// <summary>The operator fixed the cause: poison messages are handled from now on.</summary>
    public void FixCause() => Volatile.Write(ref _fixed, 1);

    /// <summary>Delivers a message as another service's embedded transport would; true when the service answered 2xx.</summary>
    public async Task<bool> DeliverAsync(string messageId, string correlationId)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "treaty/messages") { Content = new StringContent("{\"sku\":\"book\",\"qty\":1}") };
        request.Headers.Add("Treaty-Message-Id", messageId);
        request.Headers.Add("Treaty-Message-Type", MessageType);
        request.Headers.Add("Treaty-Correlation-Id", correlationId);
        request.Headers.Add("Treaty-Source", "order");
        request.Headers.Add("Treaty-Created-At", "2026-12-06T12:00:00.0000000Z");
        using var response = await _http.SendAsync(request);
        return response.IsSuccessStatusCode;
    }

    /// <summary>How many times the handler committed <paramref name="messageId"/>.</summary>
    public async Task<long> HandledCountAsync(string messageId)
    {
        await using var tx = await _database.BeginAsync(CancellationToken.None);
        await using var count = tx.CreateCommand("SELECT COUNT(*) FROM handled WHERE message_id = @m", ("m", messageId));
        var result = Convert.ToInt64(await count.ExecuteScalarAsync(), System.Globalization.CultureInfo.InvariantCulture);
        await tx.CommitAsync(CancellationToken.None);
        return result;
    }

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        try
        {
            using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            await _app.StopAsync(stop.Token);
        }
        finally
        {
            await _app.DisposeAsync();
            Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
            _dir.Dispose();
        }
    }
}
