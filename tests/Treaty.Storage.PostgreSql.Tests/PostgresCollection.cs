using Treaty.Testing;

namespace Treaty.Storage.PostgreSql.Tests;

/// <summary>One PostgreSQL cluster (<see cref="PostgresFixture"/>, Treaty.Testing) for every test class of this assembly; each test makes its own database.</summary>
[CollectionDefinition(Name)]
public sealed class PostgresCollection : ICollectionFixture<PostgresFixture>
{
    public const string Name = "postgres";
}
