using System.Buffers;
using System.Net.Http.Headers;
using System.Security.Claims;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Mvc;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.Idempotency;

namespace Treaty.AspNetCore.Tests.Idempotency;

/// <summary>What the test endpoints do and what they did: run counts, failure switches, gates.</summary>
public sealed class ShopControl
{
    private int _runs;
    private int _failNext;

    /// <summary>How many times a charge handler started.</summary>
    public int Runs => Volatile.Read(ref _runs);

    /// <summary>The charge ids the handlers answered with, in order.</summary>
    public List<string> Answered { get; } = [];

    /// <summary>When set, a charge handler waits for it before its writes.</summary>
    public Func<Task>? BeforeWrites { get; set; }

    /// <summary>When set, a charge handler waits for it after its writes and before it answers.</summary>
    public Func<Task>? BeforeAnswer { get; set; }

    /// <summary>Makes the next <paramref name="count"/> charge handlers throw after their writes.</summary>
    public void FailNext(int count) => Volatile.Write(ref _failNext, count);

    /// <summary>When true, a charge handler answers 503 after its writes.</summary>
    public bool Answer503 { get; set; }

    internal int StartRun() => Interlocked.Increment(ref _runs);

    internal bool ShouldFail() => Interlocked.Decrement(ref _failNext) >= 0;
}

public sealed record ChargeRequest(string Account, long Amount);

/// <summary>
/// The participant's business: debit an account, record the charge; or decline (422) when the
/// balance is short, recording the decline. All through the idempotent request's transaction.
/// </summary>
internal static class Shop
{
    public const string Schema =
        """
        CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS charges (id TEXT PRIMARY KEY, account TEXT NOT NULL, amount BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS declines (id TEXT PRIMARY KEY, account TEXT NOT NULL);
        """;

    public static async Task<IResult> ChargeAsync(HttpContext context, ChargeRequest request, ShopControl control)
    {
        control.StartRun();
        var transaction = context.GetParticipantTransaction()
            ?? throw new InvalidOperationException("an idempotent endpoint runs inside a participant transaction");
        var chargeId = Guid.NewGuid().ToString("N");
        if (control.BeforeWrites is { } beforeWrites)
        {
            await beforeWrites();
        }

        await using (var read = transaction.CreateCommand("SELECT balance FROM accounts WHERE id = @id", ("id", request.Account)))
        {
            var balance = Convert.ToInt64(await read.ExecuteScalarAsync(), System.Globalization.CultureInfo.InvariantCulture);
            if (balance < request.Amount)
            {
                await using var decline = transaction.CreateCommand("INSERT INTO declines (id, account) VALUES (@id, @account)", ("id", chargeId), ("account", request.Account));
                await decline.ExecuteNonQueryAsync();
                return Results.Problem(statusCode: 422, type: "https://shop.test/insufficient-funds", title: "Insufficient funds", detail: $"decline {chargeId}");
            }
        }

        await using (var debit = transaction.CreateCommand("UPDATE accounts SET balance = balance - @amount WHERE id = @id", ("amount", request.Amount), ("id", request.Account)))
        {
            await debit.ExecuteNonQueryAsync();
        }

        await using (var charge = transaction.CreateCommand("INSERT INTO charges (id, account, amount) VALUES (@id, @account, @amount)", ("id", chargeId), ("account", request.Account), ("amount", request.Amount)))
        {
            await charge.ExecuteNonQueryAsync();
        }

        if (control.BeforeAnswer is { } wait)
        {
            await wait();
        }

        if (control.ShouldFail())
        {
            throw new InvalidOperationException("the handler failed after its writes");
        }

        if (control.Answer503)
        {
            return Results.Problem(statusCode: 503, title: "Try later");
        }

        lock (control.Answered)
        {
            control.Answered.Add(chargeId);
        }

        context.Response.Headers.Location = $"/charges/{chargeId}";
        return Results.Json(new { chargeId, account = request.Account, amount = request.Amount }, statusCode: 201);
    }
}

/// <summary>The same business behind a controller with <see cref="IdempotencyKeyAttribute"/>.</summary>
[ApiController]
[Route("idempotency-tests/controller-charges")]
public sealed class IdempotencyTestChargesController(ShopControl control) : ControllerBase
{
    [HttpPost]
    [IdempotencyKey(Required = true)]
    public async Task<IResult> Post(ChargeRequest request) => await Shop.ChargeAsync(HttpContext, request, control);
}

/// <summary>A participant on real Kestrel (127.0.0.1, port 0) with the idempotency middleware on a given database.</summary>
internal sealed class IdempotencyTestApp : IAsyncDisposable
{
    private readonly WebApplication _app;

    private IdempotencyTestApp(WebApplication app, ParticipantDatabase database, ManualTimeProvider time, ShopControl control)
    {
        _app = app;
        Database = database;
        Time = time;
        Control = control;
    }

    public ParticipantDatabase Database { get; }

    public ManualTimeProvider Time { get; }

    public ShopControl Control { get; }

    public HttpClient Http { get; private set; } = null!;

    public Uri BaseAddress { get; private set; } = null!;

    public IServiceProvider Services => _app.Services;

    internal IdempotencyStore Store => _app.Services.GetRequiredService<IdempotencyStore>();

    public static async Task<IdempotencyTestApp> StartAsync(ParticipantDatabase database, Action<IdempotencyOptions>? configure = null)
    {
        await database.ExecuteDdlAsync(Shop.Schema, CancellationToken.None);
        var time = new ManualTimeProvider();
        var control = new ShopControl();
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton(database);
        builder.Services.AddSingleton<TimeProvider>(time);
        builder.Services.AddSingleton(control);
        builder.Services.AddTreatyIdempotency(configure);
        builder.Services.AddControllers().AddApplicationPart(typeof(IdempotencyTestChargesController).Assembly);

        var app = builder.Build();

        // a stand-in for authentication: X-User names the client, so keys are scoped per user
        app.Use((context, next) =>
        {
            if (context.Request.Headers["X-User"].ToString() is { Length: > 0 } user)
            {
                context.User = new ClaimsPrincipal(new ClaimsIdentity([new Claim(ClaimTypes.NameIdentifier, user)], "test"));
            }

            return next(context);
        });
        app.UseTreatyIdempotency();
        app.MapPost("/charges", Shop.ChargeAsync).WithIdempotencyKey(required: true);
        app.MapPost("/orders/{id}", (string id) => Results.Ok(new { id })).WithIdempotencyKey(required: true);
        app.MapPost("/optional", (HttpContext context) => Results.Text(context.GetParticipantTransaction() is null ? "no transaction" : "in a transaction"))
            .WithIdempotencyKey();
        app.MapPost("/pipe", (HttpContext context) =>
        {
            // written to the body's PipeWriter and left for the server to flush, as ASP.NET Core allows
            context.Response.StatusCode = 201;
            context.Response.ContentType = "text/plain";
            context.Response.BodyWriter.Write("written through the pipe"u8);
            return Task.CompletedTask;
        }).WithIdempotencyKey(required: true);
        app.MapPost("/plain", (HttpContext context) => Results.Text(context.GetParticipantTransaction() is null ? "no transaction" : "in a transaction"));
        app.MapControllers();

        var testApp = new IdempotencyTestApp(app, database, time, control);
        try
        {
            await app.StartAsync();
            testApp.BaseAddress = new Uri(app.Urls.Single());
            testApp.Http = new HttpClient { BaseAddress = testApp.BaseAddress, Timeout = TimeSpan.FromSeconds(60) };
            return testApp;
        }
        catch
        {
            await testApp.DisposeAsync();
            throw;
        }
    }

    public async Task SeedAccountAsync(string id, long balance)
    {
        await using var transaction = await Database.BeginAsync(CancellationToken.None);
        await using var insert = transaction.CreateCommand("INSERT INTO accounts (id, balance) VALUES (@id, @balance)", ("id", id), ("balance", balance));
        await insert.ExecuteNonQueryAsync();
        await transaction.CommitAsync(CancellationToken.None);
    }

    public async Task<long> ScalarAsync(string sql, params (string Name, object? Value)[] parameters)
    {
        await using var transaction = await Database.BeginAsync(CancellationToken.None);
        await using var command = transaction.CreateCommand(sql, parameters);
        return Convert.ToInt64(await command.ExecuteScalarAsync(), System.Globalization.CultureInfo.InvariantCulture);
    }

    public Task<long> BalanceAsync(string account) => ScalarAsync("SELECT balance FROM accounts WHERE id = @id", ("id", account));

    public Task<long> ChargeCountAsync() => ScalarAsync("SELECT count(*) FROM charges");

    public Task<long> KeyCountAsync() => ScalarAsync($"SELECT count(*) FROM {IdempotencyDefaults.TableName}");

    public static HttpRequestMessage Request(string path, string? key, string? json, string? user = null)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, path);
        if (key is not null)
        {
            request.Headers.TryAddWithoutValidation(IdempotencyDefaults.HeaderName, key);
        }

        if (user is not null)
        {
            request.Headers.Add("X-User", user);
        }

        if (json is not null)
        {
            request.Content = new StringContent(json, Encoding.UTF8, "application/json");
        }

        return request;
    }

    public static string ChargeJson(string account, long amount) => JsonSerializer.Serialize(new { account, amount });

    public async Task<Answer> SendAsync(string path, string? key, string? json, string? user = null, HttpClient? client = null)
    {
        using var request = Request(path, key, json, user);
        using var response = await (client ?? Http).SendAsync(request);
        return await Answer.ReadAsync(response);
    }

    public async ValueTask DisposeAsync()
    {
        Http?.Dispose();
        using var stopTimeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        try
        {
            await _app.StopAsync(stopTimeout.Token);
        }
        catch (OperationCanceledException)
        {
            // a handler still blocked; disposal below ends it
        }

        await _app.DisposeAsync();
    }
}

/// <summary>A response, read completely: status, content type, headers and body bytes.</summary>
public sealed record Answer(int Status, string? ContentType, byte[] Body, HttpResponseHeaders Headers)
{
    public string Text => Encoding.UTF8.GetString(Body);

    public bool Replayed => Headers.TryGetValues(IdempotencyDefaults.ReplayedHeaderName, out var values) && values.Contains("true");

    public string? RetryAfter => Headers.RetryAfter?.Delta is { } delta ? ((long)delta.TotalSeconds).ToString(System.Globalization.CultureInfo.InvariantCulture) : null;

    public JsonElement Json => JsonDocument.Parse(Body).RootElement;

    public static async Task<Answer> ReadAsync(HttpResponseMessage response) =>
        new((int)response.StatusCode, response.Content.Headers.ContentType?.ToString(), await response.Content.ReadAsByteArrayAsync(), response.Headers);
}
