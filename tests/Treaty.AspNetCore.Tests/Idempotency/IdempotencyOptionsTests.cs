using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.Idempotency;

namespace Treaty.AspNetCore.Tests.Idempotency;

public sealed class IdempotencyOptionsTests
{
    [Fact]
    public void Defaults_AreTheDocumentedOnes_AndValid()
    {
        var options = new IdempotencyOptions();

        options.HeaderName.ShouldBe("Idempotency-Key");
        options.MaxKeyLength.ShouldBe(255);
        options.KeyLifetime.ShouldBe(TimeSpan.FromHours(24));
        options.LockTimeout.ShouldBe(TimeSpan.FromSeconds(60));
        options.ReplayedHeaders.ShouldBe(["Location"]);
        options.Validate().ShouldBeEmpty();
    }

    [Fact]
    public void Validate_RejectsOutOfRangeSettings()
    {
        new IdempotencyOptions { KeyLifetime = TimeSpan.FromHours(73) }.Validate().ShouldHaveSingleItem().ShouldContain("KeyLifetime");
        new IdempotencyOptions { KeyLifetime = TimeSpan.FromHours(72) }.Validate().ShouldBeEmpty();
        new IdempotencyOptions { MaxKeyLength = 256 }.Validate().ShouldHaveSingleItem().ShouldContain("MaxKeyLength");
        new IdempotencyOptions { LockTimeout = TimeSpan.Zero }.Validate().ShouldNotBeEmpty();
        new IdempotencyOptions { KeyLifetime = TimeSpan.FromSeconds(10) }.Validate().ShouldHaveSingleItem().ShouldContain("LockTimeout");
        new IdempotencyOptions { HeaderName = "Bad Header" }.Validate().ShouldHaveSingleItem().ShouldContain("HeaderName");
        new IdempotencyOptions { SweepInterval = TimeSpan.Zero, SweepBatchSize = 0 }.Validate().Count.ShouldBe(2);
    }

    [Fact]
    public async Task InvalidOptions_FailTheHostAtStart()
    {
        using var dir = new TempDir("idempotency-options");
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton<ParticipantDatabase>(new SqliteParticipantDatabase(Path.Combine(dir.Path, "p.db")));
        builder.Services.AddTreatyIdempotency(o => o.KeyLifetime = TimeSpan.FromDays(4));
        await using var app = builder.Build();

        var failure = await Should.ThrowAsync<OptionsValidationException>(() => app.StartAsync());

        failure.Message.ShouldContain("KeyLifetime");
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
    }

    [Fact]
    public void UseTreatyIdempotency_WithoutAddTreatyIdempotency_SaysWhatIsMissing()
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
        var app = builder.Build();

        Should.Throw<InvalidOperationException>(() => app.UseTreatyIdempotency()).Message.ShouldContain("AddTreatyIdempotency");
    }

    [Fact]
    public void WithIdempotencyKey_AddsTheAttributeAsEndpointMetadata()
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
        var app = builder.Build();
        app.MapPost("/a", () => "a").WithIdempotencyKey(required: true);
        app.MapPost("/b", () => "b").WithIdempotencyKey();

        var endpoints = ((IEndpointRouteBuilder)app).DataSources.SelectMany(s => s.Endpoints).ToList();

        endpoints.Single(e => e.DisplayName!.Contains("/a", StringComparison.Ordinal)).Metadata.GetMetadata<IdempotencyKeyAttribute>()!.Required.ShouldBeTrue();
        endpoints.Single(e => e.DisplayName!.Contains("/b", StringComparison.Ordinal)).Metadata.GetMetadata<IdempotencyKeyAttribute>()!.Required.ShouldBeFalse();
    }
}
